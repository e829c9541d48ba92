"""Helpers with one home: project paths, machine facts, and the environment a sweep passes to its jobs."""
