"""tf.data: shuffle paths, decode batches in parallel (OpenCV releases the GIL), prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.utils.system import usable_cores


class TFDataLoader(Loader):
    """A tf.data pipeline: batches of paths decoded `num_parallel_calls` at a time, `prefetch` ready ahead."""

    name = "tfdata"

    def __init__(
        self,
        num_parallel_calls: int | None = None,
        prefetch: int | None = None,
        shuffle_buffer: int | None = None,
        deterministic: bool = False,
        cache: str | None = None,
        autotune: bool = True,
    ):
        # tf.data's autotuner sizes the null knobs by default. autotune=false fixes them instead:
        # one batch (64 decodes, a long even task) in flight per core and 2 prefetched, which was
        # faster on a 2-core machine, where the autotuner stalled a third to a half of the epochs
        # by ~0.13 s at their end (TF 2.21): 0.79x the throughput, paired in one process.
        self.autotune = autotune
        default = tf.data.AUTOTUNE if autotune else None
        self.num_parallel_calls = num_parallel_calls or default or usable_cores()
        self.prefetch = prefetch or default or 2
        self.shuffle_buffer = shuffle_buffer  # None: the whole split, a perfect shuffle of paths
        self.deterministic = deterministic
        self.cache = cache  # None, "memory", or a file prefix for decoded images

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset:
        """The pipeline, one pass over the split."""
        shape = decoder.spec.shape

        def decode_batch(paths: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            images, labels = tf.numpy_function(
                decoder.batch, [paths, labels], [tf.uint8, tf.int32], stateful=False
            )
            images.set_shape((None, *shape))
            labels.set_shape((None,))
            return images, labels

        ds = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels.astype(np.int32)))
        if self.cache:
            # Decode once, then serve from the cache; shuffle decoded images after it.
            ds = (
                ds.batch(batch_size)
                .map(
                    decode_batch, num_parallel_calls=self.num_parallel_calls, deterministic=self.deterministic
                )
                .unbatch()
            )
            ds = ds.cache("" if self.cache == "memory" else self.cache)
            if training:
                ds = ds.shuffle(self.shuffle_buffer or 1024, seed=seed, reshuffle_each_iteration=True)
            ds = ds.batch(batch_size)
        else:
            if training:
                ds = ds.shuffle(self.shuffle_buffer or len(split), seed=seed, reshuffle_each_iteration=True)
            ds = ds.batch(batch_size).map(
                decode_batch, num_parallel_calls=self.num_parallel_calls, deterministic=self.deterministic
            )
        options = tf.data.Options()
        options.autotune.enabled = self.autotune
        return ds.prefetch(self.prefetch).with_options(options)

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """A finite dataset; fit iterates it once per epoch."""
        return Feed(x=self.dataset(split, decoder, batch_size, training, seed))
