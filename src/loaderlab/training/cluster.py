"""The cluster under MultiWorkerMirroredStrategy: collectives, epoch state across workers, lost workers."""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from loaderlab.training.distribute import Worker

log = logging.getLogger(__name__)
SUM = tf.distribute.ReduceOp.SUM


class WorkerLostError(RuntimeError):
    """A collective failed because another worker of the cluster went away."""


# The errors a collective raises when the cluster breaks: a peer gone, hung, or unheard.
CLUSTER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
)


def multiworker_strategy(heartbeat_timeout_s: float = 60.0, **options: Any) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy whose coordination service waits heartbeat_timeout_s for a worker's
    heartbeat before it fails the cluster (TensorFlow's own 10 s aborts a busy machine's cluster).

    No public API sets it: the private context call is the one the strategy itself makes, with only
    the timeout added, made first so that the strategy keeps it."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in spec.jobs]
    if resolver.task_type in jobs and context.context().coordination_service is None:
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=multi_worker_util.coordination_leader(spec),
            coordinated_jobs=[
                coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
                for job in jobs
            ],
            heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000),
        )
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, **options)


def gather(strategy: tf.distribute.Strategy, values: list[float]) -> np.ndarray:
    """Every worker's `values`, on every worker, in worker order: shape (workers, len(values))."""
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([values], tf.float64)
    )
    gathered = tf.function(lambda v: strategy.gather(v, axis=0))(per_replica).numpy()
    return gathered[:: len(strategy.extended.worker_devices)]  # a row per replica: keep one per worker


def assign_reduced(
    strategy: tf.distribute.Strategy, variables: list, op: tf.distribute.ReduceOp, chief_only: bool = False
) -> Callable[[], None]:
    """A function that sets each variable, on every replica, to `op` over all replicas' own copies;
    with chief_only, a SUM of replica 0's copy alone: the chief's value, broadcast."""

    def local(var: Any) -> tf.Tensor:
        value = tf.identity(var)  # in replica context: this replica's own copy
        if not chief_only:
            return value
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, value, tf.zeros_like(value))

    @tf.function
    def run() -> None:
        for var in variables:
            var.assign(strategy.reduce(op, strategy.run(functools.partial(local, var)), axis=None))

    return run


class EpochState:
    """trainer.resume for the loop: TensorFlow's multi-worker checkpointing of weights, optimizer, epoch.

    Saving is a collective, so every worker saves: the chief to the real folder, the others to a
    temporary folder they delete at once. On resume the chief restores and sends its state to the
    others, so no shared file system is needed.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, worker: Worker, folder: Path):
        self.strategy, self.worker, self.folder = strategy, worker, Path(folder)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.variables = [*model.variables, *model.optimizer.variables, self.epoch]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch)

    def restore(self) -> int:
        """Load the chief's latest checkpoint on every worker; the epoch to continue from (0: none)."""
        latest = tf.train.latest_checkpoint(self.folder) if self.worker.is_chief else None
        found = gather(self.strategy, [1.0 if latest else 0.0])[0, 0]
        if not found:
            return 0
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        assign_reduced(self.strategy, self.variables, SUM, chief_only=True)()
        log.info("Resumed from %s at epoch %d", self.folder, int(self.epoch.numpy()))
        return int(self.epoch.numpy())

    def save(self, epochs_done: int) -> None:
        """Record that `epochs_done` epochs are complete (every worker calls it)."""
        self.epoch.assign(epochs_done)
        folder = self.folder if self.worker.is_chief else Path(tempfile.mkdtemp(prefix="ckpt-"))
        tf.train.CheckpointManager(self.checkpoint, str(folder), max_to_keep=2).save(epochs_done)
        if not self.worker.is_chief:
            shutil.rmtree(folder, ignore_errors=True)


def unreachable_workers(cluster: dict[str, list[str]], me: Worker) -> list[str]:
    """The other workers whose address no longer takes connections (their process is gone)."""
    addresses = [*cluster.get("chief", []), *cluster.get("worker", [])]
    lost = []
    for index, address in enumerate(addresses):
        if index == me.index:
            continue
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            lost.append(f"worker {index} ({address})")
    return lost


def worker_lost(strategy: tf.distribute.Strategy, me: Worker, error: BaseException) -> WorkerLostError:
    """The error to raise for a collective that failed with `error`: why, as lost_worker_message says."""
    return WorkerLostError(f"{lost_worker_message(strategy, me, 15.0, error)} ({type(error).__name__})")


def lost_worker_message(
    strategy: tf.distribute.Strategy, me: Worker, wait_s: float = 0.0, error: BaseException | None = None
) -> str:
    """Why the cluster stopped, naming the workers that went away where they can be told. `wait_s`:
    how long to look again, after a peer reset its connection (a dying process still answers for a
    moment, longer on a busy machine). `error`: the collective's own error, where there is one."""
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    deadline = time.monotonic() + wait_s
    while not (lost := unreachable_workers(cluster, me)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not lost and error is not None and "heartbeat" in str(error):  # the coordination service's words
        return (
            f"TensorFlow's coordination service heard no heartbeat from a worker of the {me.count}-worker "
            "cluster within strategy.heartbeat_timeout_s, while every worker's address still answers: a "
            "worker hung, or the machine was too busy to send one in time. If the workers are only "
            "busy, raise strategy.heartbeat_timeout_s and restart every worker (trainer.resume=<its run "
            "folder> continues from the last finished epoch)."
        )
    who = ", ".join(lost) if lost else "another worker (all addresses still answer: it may hang)"
    return (
        f"Lost {who} of the {me.count}-worker cluster: worker {me.index} waited for it in a collective "
        "step. Restart every worker with trainer.resume=<its run folder> to continue from the last "
        "finished epoch."
    )
