"""Training across machines under MultiWorkerMirroredStrategy: a distributed custom loop.

Keras 3's model.fit fails under this strategy (keras/src/backend/tensorflow/trainer.py reduces
the first batch and the scalar metrics across workers in ways the strategy rejects), so this loop
takes fit's place: the same model, optimizer and Keras callbacks (driven through
keras.callbacks.CallbackList), a tf.function step run by `strategy.run`, one shard of the
manifest per worker, and TensorFlow's multi-worker checkpointing for trainer.resume.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import keras
import numpy as np
import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Loader
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.training.cluster import (
    CLUSTER_ERRORS,
    SUM,
    EpochState,
    assign_reduced,
    gather,
    worker_lost,
)
from loaderlab.training.distribute import Worker
from loaderlab.utils.errors import ConfigError

log = logging.getLogger(__name__)
MEAN = tf.distribute.ReduceOp.MEAN
# Training: every worker runs the same number of full steps; the images past the last full step
# of a worker's shard (fewer than a global batch in all) are left out of that epoch.
UNEVEN_SHARDS = "drop"


class MultiworkerLoaderError(ConfigError):
    """The loader has no tf.data pipeline that each worker could shard."""


@runtime_checkable
class DatasetLoader(Protocol):
    """A loader that builds a tf.data pipeline over any split (tfdata, tfdata_service)."""

    name: str

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset: ...


def check_loader(loader: Loader, worker: Worker) -> None:
    """Refuse, before any data work, a loader that cannot be sharded across workers."""
    if worker.count > 1 and not isinstance(loader, DatasetLoader):
        raise MultiworkerLoaderError(
            f"loader={loader.name} does not run under strategy=multiworker ({worker.count} workers): "
            "each worker must read its own shard of the files through a tf.data pipeline, and this "
            "loader measures Keras' own input machinery (a PyDataset worker pool, a generator in fit, "
            "or the whole split in one array), which a tf.data wrapper would replace. Use loader=tfdata "
            "(or loader=tfdata_service), or strategy=mirrored on one machine."
        )


def shard(split: Split, index: int, count: int) -> Split:
    """Worker `index`'s files: every count-th one from `index`, so shards differ by one file at most."""
    return Split(split.paths[index::count], split.labels[index::count])


@dataclass(frozen=True)
class Plan:
    """How an epoch divides among the workers."""

    workers: int
    global_batch: int
    steps: int  # training steps per epoch, the same on every worker
    train_images: int  # images trained on per epoch, all workers together
    dropped_images: int  # training images left out of each epoch

    @classmethod
    def of(cls, num_train: int, workers: int, global_batch: int) -> Plan:
        """Full global batches only: as many steps as the smallest shard fills."""
        smallest = num_train // workers
        steps = smallest // (global_batch // workers)
        if steps == 0:
            raise ConfigError(
                f"{num_train} training images over {workers} workers fill no global batch of "
                f"{global_batch}: lower batch.train or add images."
            )
        return cls(workers, global_batch, steps, steps * global_batch, num_train - steps * global_batch)

    def agreed(self, images_per_worker: Iterable[float]) -> Plan:
        """The plan for the shards as read: a pack under on_bad_image=skip may hold fewer records than
        the manifest gave its worker, and every worker must run the same number of steps."""
        num_train = self.train_images + self.dropped_images
        steps = int(min(images_per_worker)) // (self.global_batch // self.workers)
        if steps == 0:
            raise ConfigError(
                f"The smallest worker's shard holds {int(min(images_per_worker))} readable images: no "
                f"global batch of {self.global_batch}. Lower batch.train or add images."
            )
        train_images = steps * self.global_batch
        return Plan(self.workers, self.global_batch, steps, train_images, num_train - train_images)

    def params(self) -> dict[str, Any]:
        """What the run logs about it."""
        return {
            "strategy.uneven_shards": UNEVEN_SHARDS,
            "strategy.steps_per_epoch": self.steps,
            "strategy.dropped_train_images_per_epoch": self.dropped_images,
        }


def worker_part(
    loader: DatasetLoader,
    split: Split,
    decoder: ImageDecoder,
    batch_size: int,
    training: bool,
    seed: int,
    worker: Worker,
) -> tuple[tf.data.Dataset, int]:
    """This worker's pipeline and how many readable images it holds: its own shard of the files, or,
    for a loader that shares one pipeline source between workers (packed), its part of that."""
    if hasattr(loader, "worker_dataset"):
        return loader.worker_dataset(split, decoder, batch_size, training, seed, worker.index, worker.count)
    part = shard(split, worker.index, worker.count)
    skipped_before = len(decoder.skipped)
    ds = loader.dataset(part, decoder, batch_size, training, seed)
    return ds, len(part) - (len(decoder.skipped) - skipped_before)


def training_data(
    strategy: tf.distribute.Strategy, worker: Worker, ds: tf.data.Dataset, batch: int
) -> tf.distribute.DistributedDataset:
    """This worker's pipeline as its input to the strategy, in full batches (the loop takes
    `plan.steps` of them an epoch)."""

    def make(context: tf.distribute.InputContext) -> tf.data.Dataset:
        assert context.input_pipeline_id == worker.index, "one input pipeline per worker"
        return ds.rebatch(batch, drop_remainder=True)  # full batches, across the loader's boundaries

    return strategy.distribute_datasets_from_function(make)  # the worker's part is its own: no auto-sharding


@dataclass(frozen=True)
class Data:
    """This worker's pipelines, and the plan every worker agreed on once they were built."""

    train: tf.distribute.DistributedDataset
    val: tf.data.Dataset
    plan: Plan


def build_data(
    strategy: tf.distribute.Strategy,
    worker: Worker,
    loader: DatasetLoader,
    train: Split,
    val: Split,
    decoder: ImageDecoder,
    plan: Plan,
    val_batch: int,  # this worker's
    seed: int,
) -> Data:
    """Build the pipelines (a packed loader writes its packs here), then agree on the steps.

    The agreement is a collective, so it also waits for every worker to finish its packs: a job
    calls this before its stall watchdog is armed, as a long first pack is not a stall.
    """
    batch = plan.global_batch // strategy.num_replicas_in_sync  # this worker's
    train_ds, readable = worker_part(loader, train, decoder, batch, True, seed + worker.index, worker)
    val_data, _ = worker_part(loader, val, decoder, val_batch, False, seed, worker)
    train_data = training_data(strategy, worker, train_ds, batch)
    try:  # the cluster's first collective
        readable_per_worker = gather(strategy, [float(readable)])[:, 0]
    except CLUSTER_ERRORS as e:
        raise worker_lost(strategy, worker, e) from e
    return Data(train_data, val_data, plan.agreed(readable_per_worker))


def _sums(labels: tf.Tensor, probs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(sum of losses, correct predictions, count) of one replica's batch."""
    losses = keras.losses.sparse_categorical_crossentropy(labels, probs)
    correct = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32)
    return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)


def _logs(totals: np.ndarray) -> dict[str, float]:
    loss, correct, count = (float(x) for x in totals)
    return {"loss": loss / count, "accuracy": correct / count} if count else {}


class Steps:
    """The loop's compiled steps; each returns (loss sum, correct, count) as a numpy array."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model):
        self.strategy = strategy

        def train(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                loss_sum, correct, count = _sums(labels, probs)
                # The mean over the global batch: each replica's sum over the cluster's count.
                loss = loss_sum / context.all_reduce(SUM, count)
                if model.losses:
                    loss += tf.add_n(model.losses) / context.num_replicas_in_sync
                scaled = model.optimizer.scale_loss(loss)  # mixed_float16's loss scale; else the loss
            grads = tape.gradient(scaled, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return context.all_reduce(SUM, tf.stack([loss_sum, correct, count]))

        self._train = tf.function(lambda batch: strategy.run(train, args=batch))
        # Evaluation runs on this worker's own shard, outside strategy.run: no collective per step,
        # so shards of any length are fine; the sums are added across workers after the pass.
        self._evaluate = tf.function(lambda images, labels: tf.stack(_sums(labels, model(images))))

    def train(self, batch: Any) -> np.ndarray:
        """One synchronous training step; the cluster's (loss sum, correct, count)."""
        return self.strategy.experimental_local_results(self._train(batch))[0].numpy()

    def evaluate(self, batch: Any) -> np.ndarray:
        """One evaluation step on this worker's batch: its (loss sum, correct, count)."""
        return self._evaluate(*batch).numpy()


def moving_statistics(model: keras.Model) -> list:
    """The model's floating-point non-trainable weights, e.g. BatchNormalization's moving mean and variance.

    Keras 3 creates them with aggregation "none": under tf.distribute each replica updates its own
    copy from its own batches, so the workers' copies drift apart unless averaged.
    """
    return [v for v in model.non_trainable_variables if v.dtype.startswith(("float", "bfloat"))]


def fit(
    strategy: tf.distribute.Strategy,
    worker: Worker,
    model: keras.Model,
    data: Data,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    state_folder: Path,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Train like model.fit: the same callbacks, per-epoch val_loss over the whole validation split."""
    state = EpochState(strategy, model, worker, state_folder)
    initial_epoch = state.restore()
    plan = data.plan
    steps = Steps(strategy, model)
    # Averaging exponential moving averages that started equal gives the average of the updates:
    # the statistics Keras 2's MEAN aggregation kept, and the same weights on every worker.
    average_statistics = assign_reduced(strategy, moving_statistics(model), MEAN)
    hooks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=worker.is_chief and verbose != 0,
        model=model,
        verbose=verbose if worker.is_chief else 0,
        epochs=epochs,
        steps=plan.steps,
    )
    model.stop_training = False
    hooks.on_train_begin()
    logs: dict[str, float] = {}
    try:
        for epoch in range(initial_epoch, epochs):
            # Start every worker's epoch clock together: a worker still checkpointing or logging the
            # last epoch would otherwise count in the others' first step.
            gather(strategy, [0.0])
            hooks.on_epoch_begin(epoch)
            train_steps = _run(
                steps.train, data.train, hooks.on_train_batch_begin, hooks.on_train_batch_end, plan.steps
            )
            logs = _logs(train_steps)
            average_statistics()  # before validation and the checkpoint
            hooks.on_test_begin()
            local = _run(steps.evaluate, data.val, hooks.on_test_batch_begin, hooks.on_test_batch_end)
            val_logs = _logs(gather(strategy, list(local)).sum(axis=0))  # every worker's part: the split
            hooks.on_test_end(val_logs)
            logs |= {f"val_{k}": v for k, v in val_logs.items()}
            hooks.on_epoch_end(epoch, logs)
            state.save(epoch + 1)
            if model.stop_training:  # EarlyStopping: every worker sees the same val_loss, so all stop
                break
    except CLUSTER_ERRORS as e:
        raise worker_lost(strategy, worker, e) from e
    hooks.on_train_end(logs)
    return model.history


def weights_sha256(model: keras.Model) -> str:
    """A checksum of the model's weights: equal on every worker when they trained in step."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _run(
    step: Callable[[Any], np.ndarray],
    data: Iterable[Any],
    on_begin: Callable[..., None],
    on_end: Callable[..., None],
    limit: int | None = None,
) -> np.ndarray:
    """One pass over the data (its first `limit` steps); the (loss sum, correct, count) totals. Each
    step's callbacks get the running mean loss and accuracy."""
    totals = np.zeros(3)
    for i, batch in enumerate(itertools.islice(data, limit)):
        on_begin(i)
        totals += step(batch)
        on_end(i, _logs(totals))
    return totals
