"""Keras callbacks: throughput figures and per-epoch MLflow logging."""

from __future__ import annotations

import keras

from loaderlab.monitor import ThroughputTracker
from loaderlab.run_log import RunLog
from loaderlab.training.lifecycle import raise_if_stopped


class ThroughputCallback(keras.callbacks.Callback):
    """Times training steps; adds epoch_time_s and epoch_images_per_sec to the epoch logs."""

    def __init__(self, tracker: ThroughputTracker, batch_size: int):
        super().__init__()
        self.tracker, self.batch_size = tracker, batch_size

    def on_train_begin(self, logs=None):
        if self.tracker.fit_started_at is None:
            self.tracker.fit_start()

    def on_epoch_begin(self, epoch, logs=None):
        self.tracker.epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        self.tracker.step_end(self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        timing = self.tracker.epoch_end()
        if logs is not None:  # the same dict reaches the callbacks after this one
            logs["epoch_time_s"] = timing.epoch_time_s
            logs["epoch_images_per_sec"] = timing.train_images / timing.train_time_s


class StopOnSignal(keras.callbacks.Callback):
    """A stop signal (SIGTERM, SIGUSR2) raised again at the next batch, should its first interrupt
    have been swallowed (training/lifecycle.py)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_stopped()

    def on_test_batch_end(self, batch, logs=None):
        raise_if_stopped()

    def on_epoch_end(self, epoch, logs=None):
        raise_if_stopped()


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's logs to the run, with step = epoch, through the run's journal (never dropped)."""

    def __init__(self, run_log: RunLog):
        super().__init__()
        self.run_log = run_log

    def on_epoch_end(self, epoch, logs=None):
        self.run_log.metrics(logs or {}, step=epoch)
