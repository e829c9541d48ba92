"""A guard against a training loop that stops making progress and would wait forever.

Keras waits without a timeout for each batch a PyDataset worker process computes; if the
OOM killer or a signal ends that worker, fit() never returns and the main thread, blocked in
TensorFlow, cannot even take Ctrl-C. The watchdog notices that no step has finished for
`timeout_s`, records why on the MLflow run, ends the run FAILED, stops the worker processes
and exits the job with a non-zero code, so a sweep moves on to its next job.

Its clock starts when training starts (on_train_begin), not when the job enters it: what comes
before, a first pack or a wait for the other workers' packs, is slow but no stall.

Its thread belongs to the job, not to fit: the job enters it as a context manager, so the thread
stops in every ending (Keras calls on_train_end only when fit returns), and once stopped it can no
longer act, even mid-check: a notebook or an in-process sweep runs other jobs in the same process.
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
        self._last_progress: float | None = None  # None: training has not started, nothing to watch
        self._stop = threading.Event()
        self._acting = threading.Lock()  # held from the decision to act on a stall to the exit
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StallWatchdog:
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop watching and wait for the thread: after this it never acts."""
        with self._acting:  # a stall being acted on ends the process; otherwise it is never acted on
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def on_train_begin(self, logs=None):
        self._progress()

    def on_epoch_begin(self, epoch, logs=None):
        self._progress()

    def on_train_batch_end(self, batch, logs=None):
        self._progress()

    def on_test_begin(self, logs=None):
        self._progress()

    def on_test_batch_end(self, batch, logs=None):
        self._progress()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self._last_progress is None:
                continue
            idle = time.monotonic() - self._last_progress
            if idle <= self.timeout_s:
                continue
            with self._acting:
                if self._stop.is_set():  # the job ended meanwhile: not ours to act on
                    return
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
