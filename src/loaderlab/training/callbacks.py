"""Keras callbacks: the job's own (throughput, per-epoch MLflow logging, resume state, guards) and the
callbacks config group's, built with hydra.utils.instantiate."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import keras
from hydra.utils import instantiate
from omegaconf import DictConfig

from loaderlab.monitor import ThroughputTracker
from loaderlab.run_log import RunLog
from loaderlab.training.lifecycle import raise_if_stopped

if TYPE_CHECKING:
    from loaderlab.training.recipe import Phase
    from loaderlab.training.run import Job


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


def job_callbacks(job: Job, batch_size: int, phase: Phase) -> list[keras.callbacks.Callback]:
    """Every callback of one phase's fit, in order: guards, throughput and the phase's facts first, so
    that EpochMetrics logs them; the callbacks group's; then the resume state.
    Those that own a thread (the watchdog) are entered into the job, which, not fit, stops them."""
    from loaderlab.training.context import BACKUP_DIR
    from loaderlab.training.recipe import PhaseLog

    if not job.shared_callbacks:
        job.shared_callbacks = _shared_callbacks(job, batch_size)
    guards, throughput, *rest = job.shared_callbacks
    callbacks = [guards, throughput, PhaseLog(phase), *rest]
    if job.worker.count == 1:
        # The epoch state that trainer.resume continues from; kept after training ends, one per phase
        # (their optimizers differ). The multi-worker loop checkpoints with TensorFlow's own.
        backup = job.state_dir / BACKUP_DIR / phase.backup_subfolder
        # double_checkpoint: a job killed while saving (Slurm's SIGKILL) resumes from the copy before.
        callbacks.append(
            keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False, double_checkpoint=True)
        )
    return callbacks


def _shared_callbacks(job: Job, batch_size: int) -> list[keras.callbacks.Callback]:
    """The callbacks that keep their state from one phase to the next (the best val_loss, the clock)."""
    cfg, worker = job.cfg, job.worker
    shared = [
        StopOnSignal(),
        ThroughputCallback(job.monitors.throughput, batch_size),
        EpochMetrics(job.run_log),
    ]
    best_file = job.state_dir / "checkpoints" / "best.keras"
    shared += configured_callbacks(cfg.callbacks, best_file, job.best_before, worker.is_chief)
    if job.neighbours is not None:
        sample = job.neighbours.sample
        shared.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: sample()))
    if cfg.trainer.stall_timeout_s:
        from loaderlab.training.watchdog import StallWatchdog

        explain = None
        if worker.count > 1:  # a stall there is a lost worker: name it
            from loaderlab.training.cluster import lost_worker_message

            explain = functools.partial(lost_worker_message, job.strategy, worker)
        watchdog = StallWatchdog(cfg.trainer.stall_timeout_s, job.run_log.fail, explain=explain)
        shared.append(job.owned.enter_context(watchdog))
    return shared


def configured_callbacks(
    group: DictConfig, best_file, best_before: float, is_chief: bool
) -> list[keras.callbacks.Callback]:
    """The callbacks group's entries, each instantiated; null ones are off. `checkpoint` (a partial) gets
    the job's best-model path and best val_loss so far, and runs on the chief only."""
    made = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        if name == "checkpoint":
            if is_chief:
                made.append(instantiate(node)(path=best_file, best=best_before))
            continue
        made.append(instantiate(node))
    return made
