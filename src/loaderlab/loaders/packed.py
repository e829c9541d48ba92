"""Packed: the split written once as TFRecord shards of resized JPEGs (data/pack.py), read by tf.data.

Each epoch: the shard order reshuffled, shards read in parallel (interleave), records shuffled in a
bounded buffer, then decoded in TensorFlow's graph: a plain decode where every image is stored at the
input size, else each image's window (tf_decode: the resize mode, or a training crop) decoded and
resized. A pack in a store is read from a local cache of its shards, or
streamed shard by shard when it is larger than `cache_gb` allows (data/pack_cache.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import tensorflow as tf

from loaderlab.data.manifest import Split
from loaderlab.data.pack import Pack, PackSpec, pack_split
from loaderlab.data.pack_cache import local_shards, stream_records
from loaderlab.data.pack_root import PackRoot, hold_to_read
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.loaders.tf_decode import tf_decode_resize_data, tf_uniforms
from loaderlab.utils.paths import OUTPUTS
from loaderlab.utils.system import MB, usable_cores

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "index": tf.io.FixedLenFeature([], tf.int64),
}
_HANDOFF_RECORDS = 64  # records a shard's reader passes on at once
RRC_SIDE = 1.125  # loader.pack_side=null under augment=rrc: this times the input side (docs/augment.md)


class PackedLoader(Loader):
    """Reads a pack of the split, writing it on first use; see data/pack.py for what a pack is."""

    name = "packed"

    def __init__(
        self,
        pack_side: int | None = None,
        quality: int = 90,
        subsampling: str = "444",
        shard_mb: float = 100.0,
        shuffle_buffer: int = 2048,
        num_parallel_calls: int | None = None,
        prefetch: int = 2,
        root: str | None = None,
        progress: bool | int | str = True,
        autotune: bool = False,
        cache_gb: float = 20.0,
    ):
        if not 1 <= quality <= 100:
            raise ValueError(f"loader.quality must be between 1 and 100. Received: quality={quality}")
        if str(subsampling) not in ("444", "420"):
            raise ValueError(f"loader.subsampling must be 444 or 420. Received: subsampling={subsampling}")
        if shard_mb <= 0:
            raise ValueError(f"loader.shard_mb must be positive. Received: shard_mb={shard_mb}")
        if cache_gb < 0:
            raise ValueError(f"loader.cache_gb must be 0 or more. Received: cache_gb={cache_gb}")
        if shuffle_buffer < 1:
            raise ValueError(
                f"loader.shuffle_buffer must be positive. Received: shuffle_buffer={shuffle_buffer}"
            )
        if pack_side is not None and pack_side < 1:
            raise ValueError(
                f"loader.pack_side must be null or a positive px count. Received: pack_side={pack_side}"
            )
        self.pack_side, self.quality, self.shard_mb = pack_side, quality, shard_mb
        self.subsampling = str(subsampling)
        self.shuffle_buffer = shuffle_buffer
        # One call more than cores: each call's serial parts (parsing, stacking the batch) would
        # otherwise leave a core idle (docs/packs.md, "Full speed").
        self.num_parallel_calls = num_parallel_calls or usable_cores() + 1
        self.prefetch = prefetch
        self.root = str(root) if root else str(OUTPUTS / "packed")
        self.cache_gb = cache_gb
        self.progress = progress not in (0, False)  # ${trainer.verbose} in packed.yaml: 0 hides it
        self.autotune = autotune

    def pack(self, split: Split, decoder: ImageDecoder, training: bool) -> Pack:
        """The split's pack, written now unless one that serves exists; bad files follow the policy."""
        spec = decoder.spec
        pack = pack_split(
            split,
            "train" if training else "val",
            PackSpec(
                self.side(decoder, training),
                spec.channels,
                spec.scaled_decode,
                self.quality,
                self.subsampling,
                self.shard_mb,
            ),  # fmt: skip
            self.root,
            decoder.on_bad_image,
            progress=self.progress,
            storage=decoder.storage,
        )
        for path, reason in pack.skipped:  # counted with what other loaders skip as they decode
            decoder.note_skipped(path, reason)
        return pack

    def side(self, decoder: ImageDecoder, training: bool) -> int:
        """The stored shorter side: `pack_side`, else the input's larger side, RRC_SIDE times that for
        a training pack that rrc crops (a crop of real pixels, not an upscaled one)."""
        if self.pack_side is not None:
            return int(self.pack_side)
        larger = max(decoder.spec.height, decoder.spec.width)
        return round(larger * RRC_SIDE) if training and decoder.augment.crops else larger

    def dataset(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> tf.data.Dataset:
        """One pass over the split's pack."""
        pack = self.pack(split, decoder, training)
        shards, read = self._shards(pack, PackRoot(self.root, decoder.storage))
        return self._read(pack, shards, read, decoder, batch_size, training, seed)

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """The pack's batches, held while the feed is open (`packs.py clean` leaves it): for training,
        endless with one epoch's steps; the pack's one-time costs as the feed's metrics."""
        pack = self.pack(split, decoder, training)
        place = PackRoot(self.root, decoder.storage)
        hold = hold_to_read(place, pack.fingerprint)
        try:
            start = time.perf_counter()
            shards, read = self._shards(pack, place)
            fetch_s = time.perf_counter() - start
            x = self._read(pack, shards, read, decoder, batch_size, training, seed, endless=training)
        except BaseException:
            hold.release()
            raise
        name = "train" if training else "val"
        metrics = {"pack_time_s": pack.seconds, "pack_mb": pack.nbytes / MB}
        if place.remote:  # the copy into this machine's cache, once
            metrics["pack_fetch_s"] = fetch_s
        return Feed(
            x=x,
            steps=num_batches(pack.records, batch_size) if training else None,
            on_close=hold.release,
            metrics=metrics,
            tags={f"pack_reused_{name}": str(pack.reused).lower(), f"pack_{name}": pack.folder},
        )

    def worker_dataset(
        self,
        split: Split,
        decoder: ImageDecoder,
        batch_size: int,
        training: bool,
        seed: int,
        index: int,
        count: int,
    ) -> tuple[tf.data.Dataset, int]:
        """Worker `index` of `count` (strategy=multiworker): the whole split's pack, written by one
        worker and shared, and this worker's part of it with its record count. Disjoint shards when
        the pack has at least `count`; else every worker reads the shards and keeps every count-th record."""
        pack = self.pack(split, decoder, training)
        shards, read = self._shards(pack, PackRoot(self.root, decoder.storage))
        if len(shards) >= count:
            mine = shards[index::count]
            records = sum(shard["records"] for shard in pack.meta["shards"][index::count])
            return self._read(pack, mine, read, decoder, batch_size, training, seed, records), records
        records = len(range(index, pack.records, count))
        ds = self._read(pack, shards, read, decoder, batch_size, training, seed, records, (count, index))
        return ds, records

    def _shards(self, pack: Pack, place: PackRoot) -> tuple[list[str], Callable]:
        """The shards to read and how, each as runs of up to _HANDOFF_RECORDS records: local files (a
        store's cached here first), or, for a store's pack larger than the cache, its URLs streamed.

        Runs, not single records: a record handed from a reader thread, or from Python, one at a
        time left the cores idle about 3% of the time (docs/packs.md, "Full speed")."""
        shards = local_shards(pack, place, self.cache_gb)
        if shards is not None:
            return shards, lambda shard: tf.data.TFRecordDataset(shard).batch(_HANDOFF_RECORDS)

        def stream(url: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.from_generator(
                lambda u: _in_lists(stream_records(place, u.decode()), _HANDOFF_RECORDS),
                args=(url,),
                output_signature=tf.TensorSpec([None], tf.string),
            )

        return pack.shards, stream

    def _read(
        self,
        pack: Pack,
        shards: list[str],
        read: Callable,
        decoder: ImageDecoder,
        batch_size: int,
        training: bool,
        seed: int,
        records: int | None = None,
        part: tuple[int, int] | None = None,
        endless: bool = False,
    ) -> tf.data.Dataset:
        """Batches from the shards: one pass, or with `endless` one epoch after another (one iterator
        for the whole fit, so no epoch waits for the pipeline to fill again); `part` (count, index):
        every count-th record only, from a fixed order."""
        spec = decoder.spec
        records = pack.records if records is None else records
        files = tf.data.Dataset.from_tensor_slices(shards)
        if training and part is None:  # shards in a new order each epoch, read in parallel
            files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
            readers = max(1, min(len(shards), self.num_parallel_calls))
            runs = files.interleave(
                read, cycle_length=readers, num_parallel_calls=readers, deterministic=False
            )
        else:  # the manifest's order: as the other loaders validate; the same in every worker
            runs = files.flat_map(read)
        ds = runs.unbatch()
        if part is not None:  # every worker's part of one order: disjoint
            ds = ds.shard(*part)
        if training:  # records shuffled in a bounded buffer
            ds = ds.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

        ds = ds.batch(batch_size)
        steps = num_batches(records, batch_size)
        if endless:  # epoch after epoch, each whole; the decode below runs on across their edges
            ds = ds.repeat()
        # Where an augment is drawn, batch b is in epoch b // steps (every pass has `steps` batches).
        drawn = endless and training and decoder.augment.at_decode
        if drawn:
            ds = ds.enumerate()
        # In order when endless, so that fit's steps_per_epoch batches are exactly one epoch.
        ds = ds.map(
            self._parser(pack, decoder if drawn else None, spec, steps),
            num_parallel_calls=self.num_parallel_calls,
            deterministic=endless or not training,
        )
        if not endless:  # records carry no count TensorFlow can see; Keras needs it for steps and progress
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
        options = tf.data.Options()
        # Every parallelism here is set; with autotuning on, about a third of the passes still ran on
        # one core (docs/packs.md, "Full speed").
        options.autotune.enabled = self.autotune
        return ds.prefetch(self.prefetch).with_options(options)

    def _parser(
        self, pack: Pack, drawn: ImageDecoder | None, spec: ImageSpec, steps: int
    ) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
        """Serialized records, after their batch number where `drawn` (the training decoder whose augment
        is drawn), to (images, labels) at the spec's size: in the graph, a batch per call, no Python lock."""
        at_input = pack.meta.get("stored_sizes") == [[spec.height, spec.width]]
        if at_input and drawn is None and spec.eval_crop is None:
            # Every image stored at the input size: a plain decode; ISLOW is OpenCV's IDCT, the same pixels.
            def decode(example: dict, epoch: tf.Tensor | None) -> tf.Tensor:
                return tf.map_fn(
                    lambda data: tf.io.decode_jpeg(data, spec.channels, dct_method="INTEGER_ACCURATE"),
                    example["image"],
                    fn_output_signature=tf.TensorSpec(spec.shape, tf.uint8),
                )

        else:  # each image's window (resize mode, eval_crop, or a drawn crop), decoded and resized
            augment = drawn.augment if drawn is not None else None

            def decode(example: dict, epoch: tf.Tensor | None) -> tf.Tensor:
                if augment is None:
                    return tf.map_fn(
                        lambda data: tf_decode_resize_data(data, spec),
                        example["image"],
                        fn_output_signature=tf.TensorSpec(spec.shape, tf.uint8),
                    )
                draws = tf_uniforms(augment.seed, epoch, example["index"])
                return tf.map_fn(
                    lambda item: tf_decode_resize_data(item[0], spec, augment, item[1]),
                    (example["image"], draws),
                    fn_output_signature=tf.TensorSpec(spec.shape, tf.uint8),
                )

        def parse(*batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            *number, records = batch  # (b, records) where drawn, else (records,)
            example = tf.io.parse_example(records, _FEATURES)
            epoch = number[0] // steps if number else None
            return decode(example, epoch), tf.cast(example["label"], tf.int32)

        return parse


def _in_lists(records: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    """The records in lists of `size`, the last one shorter."""
    while chunk := list(itertools.islice(records, size)):
        yield chunk
