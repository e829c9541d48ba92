"""Facts about the machine that loaders, data generation and monitors share."""

from __future__ import annotations

import os

MB = 1024 * 1024


def usable_cores() -> int:
    """CPU cores this process may run on (CPU affinity and taskset respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
