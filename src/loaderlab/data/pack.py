"""A pack: one split written once as TFRecord shards of images re-encoded at the size training reads.

Photo-sized JPEGs cost their full entropy decode every epoch, even at a reduced libjpeg scale; a pack
pays it once. It is derived data, not a dataset: written under outputs/packed/<fingerprint>/, where
the fingerprint covers each source file (path, size, mtime), its label, the split and how images are
stored, so a changed file, split or size makes a new pack and an unchanged one is reused. A training
pack's records are written in a seeded random order, so every shard mixes the classes of a
class-sorted source; a validation pack keeps the manifest's order. A pack is written in a temporary
folder and renamed when complete: an interrupted pack is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.data.storage import Storage, is_url
from loaderlab.loaders.decode import BadImageError, ImageSpec, decode_bytes, decode_resize, remote_bytes
from loaderlab.utils.system import usable_cores

log = logging.getLogger(__name__)
PACK_FORMAT = 1  # bump when the record layout changes: old packs are then not reused
META = "pack.json"  # written last: its presence means the pack is complete
SAMPLING = {  # chroma subsampling by name
    "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}


@dataclass(frozen=True)
class PackSpec:
    """How a pack stores its images: the spec they are decoded to, then JPEG at `quality` with
    chroma `subsampling` "444" (full colour resolution) or "420" (half, as cameras store it)."""

    stored: ImageSpec
    quality: int = 90
    subsampling: str = "444"
    shard_mb: float = 100.0


@dataclass
class Pack:
    """A complete pack on disk, and what writing it cost (or that it was reused)."""

    folder: Path
    shards: list[str]
    records: int
    nbytes: int
    seconds: float  # the time it took to write; 0 when reused
    reused: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) under on_bad_image=skip


def fingerprint(
    split: Split, split_name: str, spec: PackSpec, storage: Storage | None = None, on_bad_image: str = "error"
) -> str:
    """A digest of the sources (path, size, mtime or ETag, label), the split, how the pack stores them
    and the bad-image policy (a pack that skipped a file must not serve a run that wants the error)."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "format": PACK_FORMAT,
                "split": split_name,
                "stored": [spec.stored.height, spec.stored.width, spec.stored.channels],
                "scaled_decode": spec.stored.scaled_decode,
                "quality": int(spec.quality),
                "subsampling": str(spec.subsampling),
                "shard_mb": float(spec.shard_mb),  # a config's 100 and the default 100.0 are one pack
                "on_bad_image": str(on_bad_image),
            },
            sort_keys=True,
        ).encode()
    )
    remote = {}  # URL: size and ETag from one listing, not a request per object
    if split.paths and is_url(split.paths[0]):
        remote = (storage or Storage()).object_facts(split.paths)
    for path, label in zip(split.paths, split.labels.tolist(), strict=True):
        try:
            stat = os.stat(path) if not remote else None
            facts = remote.get(path, "missing") if remote else f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            facts = "missing"  # the pass over the files reports it; the key still differs
        digest.update(f"{path}\0{label}\0{facts}\n".encode())
    return digest.hexdigest()[:24]


def pack_split(
    split: Split,
    split_name: str,
    spec: PackSpec,
    root: Path,
    on_bad_image: str = "error",
    workers: int | None = None,
    progress: bool = True,
    storage: Storage | None = None,
) -> Pack:
    """The split's pack under root: reused when its fingerprint is there, else written with every core.

    Sources at URLs are fetched here, `storage.concurrency` at a time, and encoded by the workers.
    """
    storage = storage or Storage()
    folder = Path(root) / fingerprint(split, split_name, spec, storage, on_bad_image)
    if (folder / META).exists():
        return _read_meta(folder, reused=True)
    start = time.perf_counter()
    tmp = Path(root) / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        skipped = _write_shards(
            split, split_name, spec, tmp, on_bad_image, workers or usable_cores(), progress, storage
        )
        meta = {"records": len(split) - len(skipped), "seconds": time.perf_counter() - start}
        (tmp / META).write_text(json.dumps(meta | {"skipped": skipped, "split": split_name}))
        try:
            os.rename(tmp, folder)  # atomic: the pack appears complete or not at all
        except OSError:  # another job wrote the same pack meanwhile: use theirs
            if not (folder / META).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_meta(folder, reused=False)


def _read_meta(folder: Path, reused: bool) -> Pack:
    meta = json.loads((folder / META).read_text())
    shards = sorted(str(p) for p in folder.glob("*.tfrecord"))
    return Pack(
        folder=folder,
        shards=shards,
        records=meta["records"],
        nbytes=sum(os.path.getsize(s) for s in shards),
        seconds=0.0 if reused else meta["seconds"],
        reused=reused,
        skipped=[tuple(s) for s in meta["skipped"]],
    )


def _write_shards(
    split: Split,
    split_name: str,
    spec: PackSpec,
    folder: Path,
    on_bad_image: str,
    workers: int,
    progress: bool,
    storage: Storage,
) -> list[tuple[str, str]]:
    """Encode the split and write its records, rolling shards at shard_mb."""
    import tensorflow as tf

    shuffled = split_name == "train"
    order = np.random.default_rng(0).permutation(len(split)) if shuffled else np.arange(len(split))
    tasks = _sources([(split.paths[i], int(split.labels[i])) for i in order], spec, storage)
    bar = None
    if progress:
        from keras.utils import Progbar

        print(f"Packing {len(order)} images at {spec.stored.height}x{spec.stored.width} into {folder.parent}")
        bar = Progbar(len(order), unit_name="image")
    skipped: list[tuple[str, str]] = []
    writer, shard, written = None, 0, 0.0
    try:
        for done, (path, label, data, reason) in enumerate(_encoded(tasks, len(order), workers), start=1):
            if data is None:
                if on_bad_image == "error":
                    raise BadImageError(path, reason)
                skipped.append((path, reason))
                continue
            if writer is None or written >= spec.shard_mb * 2**20:
                if writer is not None:
                    writer.close()
                writer, written = tf.io.TFRecordWriter(str(folder / f"{shard:05d}.tfrecord")), 0.0
                shard += 1
            writer.write(_example(data, label, path))
            written += len(data)
            if bar is not None and (done % 256 == 0 or done == len(order)):
                bar.update(done)
    finally:
        if writer is not None:
            writer.close()
    return skipped


def _sources(
    items: list[tuple[str, int]], spec: PackSpec, storage: Storage, chunk: int = 256
) -> Iterator[tuple[str, int, PackSpec, bytes | Exception | None]]:
    """Encoding tasks: a local file is read by its worker; URLs are fetched here, a chunk at once."""
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        urls = [path for path, _ in part if is_url(path)]
        fetched = dict(zip(urls, storage.read_many(urls), strict=True)) if urls else {}
        for path, label in part:
            yield path, label, spec, fetched.get(path)


def _encoded(tasks: Iterator, count: int, workers: int) -> Iterator[tuple[str, int, bytes | None, str]]:
    """(path, label, JPEG bytes or None, reason) of `count` tasks in order, encoded by `workers` processes."""
    if workers <= 1 or count < 64:
        yield from map(_encode_one, tasks)
        return
    # spawn, not fork: the parent may already run TensorFlow threads.
    with mp.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield from pool.imap(_encode_one, tasks, chunksize=32)


def _encode_one(
    task: tuple[str, int, PackSpec, bytes | Exception | None],
) -> tuple[str, int, bytes | None, str]:
    """One source (a file, or a URL's fetched bytes) through the shared spec at the stored size, then JPEG."""
    path, label, spec, fetched = task
    try:
        if fetched is None:
            image = decode_resize(path, spec.stored)
        else:
            image = decode_bytes(remote_bytes(path, fetched), spec.stored, name=path)
    except BadImageError as e:
        return path, label, None, e.reason
    if image.shape[-1] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV encodes BGR
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        spec.quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        SAMPLING[spec.subsampling],
    ]
    ok, encoded = cv2.imencode(".jpg", image, params)
    if not ok:
        return path, label, None, "could not be re-encoded"
    return path, label, encoded.tobytes(), ""


def _example(image: bytes, label: int, path: str) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
