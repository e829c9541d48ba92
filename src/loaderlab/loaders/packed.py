"""Packed: the split written once as TFRecord shards of resized JPEGs (data/pack.py), read by tf.data.

Each epoch: the shard order reshuffled, shards read in parallel (interleave), records shuffled in a
bounded buffer, then each batch decoded with the shared decoder at the stored size and resized to
the model's input (a no-op at the default stored size, which is the input size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.data.pack import Pack, PackSpec, pack_split
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder, ImageSpec, aligned_empty, decode_bytes
from loaderlab.utils.paths import OUTPUTS
from loaderlab.utils.system import MB, usable_cores

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


class PackedLoader(Loader):
    """Reads a pack of the split, writing it on first use; see data/pack.py for what a pack is."""

    name = "packed"

    def __init__(
        self,
        stored_size: int | list[int] | None = None,
        quality: int = 90,
        subsampling: str = "444",
        shard_mb: float = 100.0,
        shuffle_buffer: int = 2048,
        num_parallel_calls: int | None = None,
        prefetch: int = 2,
        root: str | None = None,
        progress: bool = True,
        autotune: bool = False,
    ):
        if not 1 <= quality <= 100:
            raise ValueError(f"loader.quality must be between 1 and 100. Received: quality={quality}")
        if str(subsampling) not in ("444", "420"):
            raise ValueError(f"loader.subsampling must be 444 or 420. Received: subsampling={subsampling}")
        if shard_mb <= 0:
            raise ValueError(f"loader.shard_mb must be positive. Received: shard_mb={shard_mb}")
        if shuffle_buffer < 1:
            raise ValueError(
                f"loader.shuffle_buffer must be positive. Received: shuffle_buffer={shuffle_buffer}"
            )
        self.stored_size, self.quality, self.shard_mb = stored_size, quality, shard_mb
        self.subsampling = str(subsampling)
        self.shuffle_buffer = shuffle_buffer
        self.num_parallel_calls = num_parallel_calls or usable_cores()
        self.prefetch = prefetch
        self.root = Path(root) if root else OUTPUTS / "packed"
        self.progress = progress
        self.autotune = autotune

    def pack(self, split: Split, decoder: ImageDecoder, training: bool) -> Pack:
        """The split's pack, written now unless an identical one exists; bad files follow the policy."""
        spec = decoder.spec
        if self.stored_size is None:
            height, width = spec.height, spec.width
        elif isinstance(self.stored_size, int):
            height = width = self.stored_size
        else:
            height, width = (int(v) for v in self.stored_size)
        stored = ImageSpec(height, width, spec.channels, spec.scaled_decode)
        pack = pack_split(
            split,
            "train" if training else "val",
            PackSpec(stored, self.quality, self.subsampling, self.shard_mb),
            self.root,
            decoder.on_bad_image,
            progress=self.progress,
            storage=decoder.storage,
        )
        for path, reason in pack.skipped:  # counted with what other loaders skip as they decode
            decoder.note_skipped(path, reason)
        return pack

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset:
        """One pass over the split's pack."""
        return self._read(self.pack(split, decoder, training), decoder, batch_size, training, seed)

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """A finite dataset over the pack; the pack's one-time cost as the feed's metrics."""
        pack = self.pack(split, decoder, training)
        return Feed(
            x=self._read(pack, decoder, batch_size, training, seed),
            metrics={"pack_time_s": pack.seconds, "pack_mb": pack.nbytes / MB},
            tags={f"pack_reused_{'train' if training else 'val'}": str(pack.reused).lower()},
        )

    def _read(
        self, pack: Pack, decoder: ImageDecoder, batch_size: int, training: bool, seed: int
    ) -> tf.data.Dataset:
        spec = decoder.spec
        if training:  # shards in a new order each epoch, read in parallel, records shuffled in a buffer
            files = tf.data.Dataset.from_tensor_slices(pack.shards)
            files = files.shuffle(len(pack.shards), seed=seed, reshuffle_each_iteration=True)
            readers = max(1, min(len(pack.shards), self.num_parallel_calls))
            ds = files.interleave(
                tf.data.TFRecordDataset, cycle_length=readers, num_parallel_calls=readers, deterministic=False
            )
            ds = ds.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        else:  # the manifest's order, as the other loaders validate
            ds = tf.data.TFRecordDataset(pack.shards)

        def decode(images: np.ndarray) -> np.ndarray:
            out = aligned_empty((len(images), *spec.shape))
            for i, data in enumerate(images):
                decode_bytes(data, spec, out=out[i], name="packed record")
            return out

        def parse(records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            example = tf.io.parse_example(records, _FEATURES)
            images = tf.numpy_function(decode, [example["image"]], tf.uint8, stateful=False)
            images.set_shape((None, *spec.shape))
            return images, tf.cast(example["label"], tf.int32)

        ds = ds.batch(batch_size).map(
            parse, num_parallel_calls=self.num_parallel_calls, deterministic=not training
        )
        # Records carry no count TensorFlow can see; Keras needs it for steps and progress.
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches(pack.records, batch_size)))
        options = tf.data.Options()
        # Every parallelism here is set; with autotuning on, about a third of the passes still ran on
        # one core (docs/packs.md, "The one-core passes").
        options.autotune.enabled = self.autotune
        return ds.prefetch(self.prefetch).with_options(options)
