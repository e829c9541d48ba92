"""tf.data: shuffle paths, decode in parallel in TensorFlow's threads, prefetch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.utils.system import usable_cores

DECODERS = ("opencv", "tf")


class TFDataLoader(Loader):
    """A tf.data pipeline: paths decoded `num_parallel_calls` at a time, `prefetch` batches ready ahead.

    decode=opencv runs the shared OpenCV decoder over whole batches in a numpy_function (OpenCV
    releases the GIL); decode=tf runs the same spec as TensorFlow ops, image by image (tf_decode).
    """

    name = "tfdata"

    def __init__(
        self,
        decode: str = "opencv",
        num_parallel_calls: int | None = None,
        prefetch: int | None = None,
        shuffle_buffer: int | None = None,
        deterministic: bool = False,
        cache: str | None = None,
        autotune: bool = False,
        private_threadpool_size: int | None = None,
    ):
        if decode not in DECODERS:
            raise ValueError(f"loader.decode must be one of {DECODERS}, got {decode!r}.")
        self.decode = decode
        # tf.data's autotuner sizes the null knobs by default; autotune=false fixes them instead:
        # one batch (opencv) or one image (tf) in flight per core, and 2 batches prefetched.
        self.autotune = autotune
        default = tf.data.AUTOTUNE if autotune else None
        self.num_parallel_calls = num_parallel_calls or default or usable_cores()
        self.prefetch = prefetch or default or 2
        self.shuffle_buffer = shuffle_buffer  # None: the whole split, a perfect shuffle of paths
        self.deterministic = deterministic
        self.cache = cache  # None, "memory", or a file prefix for decoded images
        # Threads of the pipeline's own, apart from the pool the model's ops run in; None: shared.
        self.private_threadpool_size = private_threadpool_size

    def _decoded_batches(
        self, ds: tf.data.Dataset, decoder: ImageDecoder, batch_size: int
    ) -> tf.data.Dataset:
        """(path, label) elements to batches of decoded (images, labels)."""
        spec = decoder.spec
        if self.decode == "tf":
            from loaderlab.loaders.tf_decode import tf_decode_resize

            ds = ds.map(
                lambda path, label: (tf_decode_resize(path, spec), label),
                num_parallel_calls=self.num_parallel_calls,
                deterministic=self.deterministic,
            )
            if decoder.on_bad_image == "skip":
                # TF ops cannot report which file failed to Python: a file that breaks mid-run is
                # left out with a warning in the log, but not counted (the up-front check counts).
                ds = ds.ignore_errors(log_warning=True)
            return ds.batch(batch_size)

        def decode_batch(paths: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return _in_python(decoder.batch, [paths, labels], spec)

        return ds.batch(batch_size).map(
            decode_batch, num_parallel_calls=self.num_parallel_calls, deterministic=self.deterministic
        )

    def _drawn_batches(
        self, split: Split, decoder: ImageDecoder, batch_size: int, seed: int
    ) -> tf.data.Dataset:
        """Training batches with the decoder's augment drawn at decode time: epoch after epoch, endless,
        each batch knowing its epoch (batch b is in epoch b // steps: every pass has `steps` batches)."""
        spec, augment = decoder.spec, decoder.augment
        steps = num_batches(len(split), batch_size)
        ds = tf.data.Dataset.from_tensor_slices(
            (list(split.paths), split.labels.astype(np.int32), np.arange(len(split), dtype=np.int64))
        )
        ds = ds.shuffle(self.shuffle_buffer or len(split), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).repeat().enumerate()
        if self.decode == "tf":
            from loaderlab.loaders.tf_decode import tf_decode_resize, tf_uniforms

            def decode(b: tf.Tensor, batch: tuple) -> tuple[tf.Tensor, tf.Tensor]:
                paths, labels, indices = batch
                draws = tf_uniforms(augment.seed, b // steps, indices)
                images = tf.map_fn(
                    lambda item: tf_decode_resize(item[0], spec, augment, item[1]),
                    (paths, draws),
                    fn_output_signature=tf.TensorSpec(spec.shape, tf.uint8),
                )
                return images, labels

        else:

            def drawn(paths: np.ndarray, labels: np.ndarray, indices: np.ndarray, epoch: np.int64) -> tuple:
                return decoder.batch(paths, labels, indices=indices, epoch=epoch)

            def decode(b: tf.Tensor, batch: tuple) -> tuple[tf.Tensor, tf.Tensor]:
                paths, labels, indices = batch
                return _in_python(drawn, [paths, labels, indices, b // steps], spec)

        # In order, as packed's endless stream: fit's `steps` batches are then exactly one epoch.
        ds = ds.map(decode, num_parallel_calls=self.num_parallel_calls, deterministic=True)
        if self.decode == "tf" and decoder.on_bad_image == "skip":
            ds = ds.ignore_errors(log_warning=True)  # a whole batch, as TF ops cannot say which file
        return ds

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset:
        """The pipeline: one pass over the split, or endless epochs when training draws an augment."""
        if training and decoder.augment.at_decode:
            if self.cache:
                raise ValueError(
                    "loader.cache keeps decoded images, so augment cannot be drawn at each decode: set "
                    f"loader.cache=null or augment=none|layers. Received: cache={self.cache!r}, "
                    f"augment={decoder.augment.kind}"
                )
            return self._finish(self._drawn_batches(split, decoder, batch_size, seed))
        ds = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels.astype(np.int32)))
        if self.cache:
            # Decode once, then serve from the cache; shuffle decoded images after it.
            ds = self._decoded_batches(ds, decoder, batch_size).unbatch()
            ds = ds.cache("" if self.cache == "memory" else self.cache_file(split, decoder, training))
            if training:
                ds = ds.shuffle(self.shuffle_buffer or 1024, seed=seed, reshuffle_each_iteration=True)
            ds = ds.batch(batch_size)
        else:
            if training:
                ds = ds.shuffle(self.shuffle_buffer or len(split), seed=seed, reshuffle_each_iteration=True)
            ds = self._decoded_batches(ds, decoder, batch_size)
        return self._finish(ds)

    def _finish(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Prefetch and the pipeline's options."""
        options = tf.data.Options()
        options.autotune.enabled = self.autotune
        if self.private_threadpool_size:
            options.threading.private_threadpool_size = self.private_threadpool_size
        return ds.prefetch(self.prefetch).with_options(options)

    def cache_file(self, split: Split, decoder: ImageDecoder, training: bool) -> str:
        """The cache's file prefix for this split: TensorFlow reads a finished cache file without
        checking what wrote it, so the name is keyed by what it holds (split, paths, labels, spec)."""
        key = hashlib.sha256(
            repr((decoder.spec, decoder.on_bad_image, self.decode, split.labels.tolist())).encode()
        )
        for path in split.paths:
            key.update(str(path).encode() + b"\0")
        return f"{self.cache}-{'train' if training else 'val'}-{key.hexdigest()[:16]}"

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """A finite dataset that fit iterates once per epoch; endless, with one epoch's steps, where
        training draws an augment."""
        x = self.dataset(split, decoder, batch_size, training, seed)
        drawn = training and decoder.augment.at_decode
        return Feed(x=x, steps=num_batches(len(split), batch_size) if drawn else None)


def _in_python(batch_of: Callable, inputs: list[tf.Tensor], spec: ImageSpec) -> tuple[tf.Tensor, tf.Tensor]:
    """(images, labels) of the shared decoder's `batch_of(*inputs)`, run in a numpy_function (OpenCV
    frees the GIL), with the static shapes the model needs."""
    images, labels = tf.numpy_function(batch_of, inputs, [tf.uint8, tf.int32], stateful=False)
    images.set_shape((None, *spec.shape))
    labels.set_shape((None,))
    return images, labels
