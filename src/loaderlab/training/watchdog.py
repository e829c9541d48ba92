"""A guard against a training loop that stops making progress and would wait forever.

Keras waits without a timeout for each batch a PyDataset worker process computes; if the
OOM killer or a signal ends that worker, fit() never returns and the main thread, blocked in
TensorFlow, cannot even take Ctrl-C. The watchdog notices that no step has finished for
`timeout_s`, records why on the MLflow run, ends the run FAILED, stops the worker processes
and exits the job with a non-zero code, so a sweep moves on to its next job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import keras

from loaderlab.training.lifecycle import stop_children, terminate_pools

log = logging.getLogger(__name__)
STALL_EXIT_CODE = 3


def _data_worker_hint() -> str:
    return (
        "A data worker process may have died, e.g. killed by the OOM killer: with loader=sequence "
        "loader.use_multiprocessing=true Keras then waits for its batch forever. Use fewer workers or "
        "less memory per worker, or threads."
    )


class StallWatchdog(keras.callbacks.Callback):
    """Fails the run when no training or validation step finishes for timeout_s seconds."""

    def __init__(
        self,
        timeout_s: float,
        on_stall: Callable[[str], None],
        poll_s: float = 1.0,
        explain: Callable[[], str] | None = None,
    ):
        super().__init__()
        self.timeout_s, self.on_stall, self.poll_s = timeout_s, on_stall, poll_s
        self.explain = explain or _data_worker_hint  # what most likely stopped the steps
        self._last_progress = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def on_train_begin(self, logs=None):
        self._progress()
        if not self._thread.is_alive():
            self._thread.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._progress()

    def on_train_batch_end(self, batch, logs=None):
        self._progress()

    def on_test_begin(self, logs=None):
        self._progress()

    def on_test_batch_end(self, batch, logs=None):
        self._progress()

    def on_train_end(self, logs=None):
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last_progress
            if idle > self.timeout_s:
                message = (
                    f"No training step finished in {idle:.0f} s (trainer.stall_timeout_s="
                    f"{self.timeout_s:g}). {self.explain()}"
                )
                log.error(message)
                self.on_stall(message)
                terminate_pools(started_after=set(), timeout_s=3.0)  # no more replacement workers
                stop_children()
                logging.shutdown()
                os._exit(STALL_EXIT_CODE)
