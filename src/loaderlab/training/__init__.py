"""One training job: the run (`run.py`), its Keras callbacks, checkpoints, stall watchdog and workers."""
