"""A pack: one split written once as TFRecord shards of images re-encoded at the size training reads.

Photo-sized JPEGs cost their full entropy decode every epoch, even at a reduced libjpeg scale; a pack
pays it once. It is derived data, not a dataset: written under `loader.root` (a folder, or any fsspec
URL such as s3://bucket/packs) as `<fingerprint>/`, where the fingerprint covers each source file
(path, size, mtime or ETag), its label, the split and how images are stored, so a changed file,
split or size makes a new pack and an unchanged one is reused by every job that can reach the root.

A training pack's records are written in a seeded random order, so every shard mixes the classes of
a class-sorted source; a validation pack keeps the manifest's order. Shards are committed one by
one (`progress.json` names those finished), so an interrupted pack resumes from its last finished
shard; `pack.json` is written last and only a pack that has it is read. One job writes a pack while
others that need it wait (data/pack_root.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.data.pack_encode import _encoded, _example, _sources
from loaderlab.data.pack_root import PackRoot, cache_folder, file_sha256, hold_to_write
from loaderlab.data.storage import Storage, is_url
from loaderlab.loaders.decode import BadImageError
from loaderlab.loaders.headers import jpeg_size
from loaderlab.utils.progress import Progress
from loaderlab.utils.system import usable_cores

log = logging.getLogger(__name__)
PACK_FORMAT = 3  # bump when the record layout changes: old packs are then not reused
_SIDE_DIGITS = 4  # a fingerprint ends in its side, in hex: packs of one source differ only there
META = "pack.json"  # written last: its presence means the pack is complete
PROGRESS = "progress.json"  # the shards committed so far, while a pack is written
VERIFY_HINT = "python src/packs.py verify --root {root}"


class PackError(RuntimeError):
    """A pack cannot be read as it is; the message names the pack and the command that checks it."""


@dataclass(frozen=True)
class PackSpec:
    """How a pack stores its images: decoded through the shared spec with the shorter side at `side`
    px (aspect kept; a smaller image as it is), then JPEG at `quality` with chroma `subsampling`
    "444" (full colour resolution) or "420" (half, as cameras store it)."""

    side: int
    channels: int = 3
    scaled_decode: bool = True
    quality: int = 90
    subsampling: str = "444"
    shard_mb: float = 100.0


@dataclass
class Pack:
    """A complete pack, and what writing it cost (or that it was reused)."""

    folder: str  # under the root: a local path or a URL
    shards: list[str]  # their paths or URLs, in the order written
    records: int
    nbytes: int
    seconds: float  # the time it took to write; 0 when reused
    reused: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) under on_bad_image=skip
    meta: dict = field(default_factory=dict)  # pack.json

    @property
    def fingerprint(self) -> str:
        return posixpath.basename(self.folder.rstrip("/"))


def fingerprint(
    split: Split, split_name: str, spec: PackSpec, storage: Storage | None = None, on_bad_image: str = "error"
) -> str:
    """A digest of the sources (path, size, mtime or ETag, label), the split, how the pack stores them
    and the bad-image policy (a pack that skipped a file must not serve a run that wants the error),
    followed by the stored side: packs that differ only in their side share the digest's part."""
    return f"{_family(split, split_name, spec, storage, on_bad_image)}{spec.side:0{_SIDE_DIGITS}x}"


def _family(split: Split, split_name: str, spec: PackSpec, storage: Storage | None, on_bad_image: str) -> str:
    """fingerprint's digest, of everything but the side."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "format": PACK_FORMAT,
                "split": split_name,
                "channels": spec.channels,
                "scaled_decode": spec.scaled_decode,
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
    return digest.hexdigest()[: 24 - _SIDE_DIGITS]


def reusable(place: PackRoot, wanted: str) -> str | None:
    """A complete pack of the same sources, split and encoding at a side at least the wanted one's,
    the smallest such: it serves as the wanted pack would (its images are resized at read time)."""
    family, side = wanted[:-_SIDE_DIGITS], int(wanted[-_SIDE_DIGITS:], 16)
    larger = sorted(
        (int(name[-_SIDE_DIGITS:], 16), name)
        for name in place.entries()
        if len(name) == len(wanted) and name.startswith(family) and int(name[-_SIDE_DIGITS:], 16) > side
    )
    for _, name in larger:
        if place.read_json(place.path(name, META)) is not None:
            return name
    return None


def pack_split(
    split: Split,
    split_name: str,
    spec: PackSpec,
    root: str | Path,
    on_bad_image: str = "error",
    workers: int | None = None,
    progress: bool = True,
    storage: Storage | None = None,
) -> Pack:
    """The split's pack under root: reused when its fingerprint is there, else written with every core
    (resuming an interrupted one), while any other job that needs it waits.

    Sources at URLs are fetched here, `storage.concurrency` at a time, and encoded by the workers.
    """
    storage = storage or Storage()
    place = PackRoot(root, storage)
    fingerprint_ = fingerprint(split, split_name, spec, storage, on_bad_image)
    if (meta := place.read_json(place.path(fingerprint_, META))) is not None:
        return _opened(place, place.path(fingerprint_), meta, reused=True)
    if (larger := reusable(place, fingerprint_)) is not None:
        return _opened(place, place.path(larger), place.read_json(place.path(larger, META)), reused=True)
    folder = place.path(fingerprint_)

    def done() -> bool:
        return place.read_json(place.path(fingerprint_, META)) is not None

    with hold_to_write(place, fingerprint_, done) as writing:
        if writing:
            start = time.perf_counter()
            meta = _write(place, folder, split, split_name, spec, on_bad_image, workers, progress)
            meta["seconds"] = time.perf_counter() - start
            place.write_json(place.path(fingerprint_, META), meta)  # last: the pack is complete
            place.remove(place.path(fingerprint_, PROGRESS))
    meta = place.read_json(place.path(fingerprint_, META))
    return _opened(place, folder, meta, reused=not writing)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _opened(place: PackRoot, folder: str, meta: dict, reused: bool) -> Pack:
    """A complete pack checked against its pack.json (each shard there, at its size); its last use noted."""
    found = place.sizes(folder)
    for shard in meta["shards"]:
        size = found.get(shard["name"])
        if size != shard["bytes"]:
            state = "missing" if size is None else f"{size} bytes, {shard['bytes']} recorded"
            raise PackError(
                f"Pack {folder} is damaged: shard {shard['name']} is {state}. Check every pack with "
                f"{VERIFY_HINT.format(root=place.url)}; delete this one there (packs.py clean) to rebuild it."
            )
    if reused:
        meta = meta | {"last_used": _now()}
        place.write_json(posixpath.join(folder, META), meta)
    return Pack(
        folder=folder,
        shards=[posixpath.join(folder, shard["name"]) for shard in meta["shards"]],
        records=meta["records"],
        nbytes=sum(shard["bytes"] for shard in meta["shards"]),
        seconds=0.0 if reused else meta["seconds"],
        reused=reused,
        skipped=[tuple(s) for s in meta["skipped"]],
        meta=meta,
    )


def _write(
    place: PackRoot,
    folder: str,
    split: Split,
    split_name: str,
    spec: PackSpec,
    on_bad_image: str,
    workers: int | None,
    progress: bool,
) -> dict:
    """Write (or finish) the pack's shards; pack.json's content, but for the time it took."""
    committed = place.read_json(posixpath.join(folder, PROGRESS)) or {
        "shards": [], "skipped": [], "end": 0, "sizes": []
    }  # fmt: skip
    if committed["end"]:
        log.info("Resuming pack %s after %d finished shards", folder, len(committed["shards"]))
    staging = _staging(place, folder)
    try:
        _write_shards(
            split, split_name, spec, place, folder, staging, committed, on_bad_image,
            workers or usable_cores(), progress,
        )  # fmt: skip
    finally:
        for leftover in staging.glob("*.partial"):
            leftover.unlink(missing_ok=True)
    return {
        "format": PACK_FORMAT,
        "fingerprint": posixpath.basename(folder),
        "source": _source(split.paths),
        "source_files": len(split.paths),
        "split": split_name,
        "spec": {
            "side": spec.side,
            "channels": spec.channels,
            "scaled_decode": spec.scaled_decode,
            "quality": spec.quality,
            "subsampling": spec.subsampling,
            "shard_mb": spec.shard_mb,
            "on_bad_image": on_bad_image,
        },
        "created": _now(),
        "last_used": _now(),
        "records": sum(shard["records"] for shard in committed["shards"]),
        "stored_sizes": committed["sizes"],  # each stored [height, width] (up to a few), or "mixed"
        "shards": committed["shards"],
        "skipped": committed["skipped"],
    }


def _source(paths: tuple[str, ...]) -> str:
    """The folder or store prefix that the split's files share."""
    if not paths:
        return ""
    if not is_url(paths[0]):
        return os.path.commonpath(paths)
    scheme = paths[0].split("://", 1)[0]
    return f"{scheme}://" + posixpath.commonpath([p.split("://", 1)[1] for p in paths])


def _staging(place: PackRoot, folder: str) -> Path:
    """Where shards are written before they are committed: the pack's own folder when it is local,
    else this machine's cache of that pack (the writer then reads its shards without fetching them)."""
    staging = Path(folder) if not place.remote else cache_folder(place.url, posixpath.basename(folder))
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _write_shards(
    split: Split,
    split_name: str,
    spec: PackSpec,
    place: PackRoot,
    folder: str,
    staging: Path,
    committed: dict,
    on_bad_image: str,
    workers: int,
    progress: bool,
) -> None:
    """Encode the split from where `committed` ends and commit a shard each shard_mb: the shard in
    place first, then progress.json naming it (a shard that progress.json does not name is rewritten)."""
    import tensorflow as tf

    shuffled = split_name == "train"
    order = np.random.default_rng(0).permutation(len(split)) if shuffled else np.arange(len(split))
    begin = committed["end"]
    items = [(split.paths[i], int(split.labels[i]), int(i)) for i in order[begin:]]
    tasks = _sources(items, spec, place.storage)
    title = f"Packing {len(order)} images, shorter side {spec.side} px, into {place.url}"
    bar = Progress(len(order), "image", title, progress, done=begin)
    state = {"writer": None, "file": None, "records": 0, "bytes": 0.0, "skipped": []}

    def commit(end: int) -> None:
        state["writer"].close()
        name = state["file"].name.removesuffix(".partial")
        size = state["file"].stat().st_size
        digest = file_sha256(state["file"])
        if place.remote:
            state["file"].rename(staging / name)  # the local copy is the writer's cache
            place.put(staging / name, posixpath.join(folder, name))
        else:
            place.put(state["file"], posixpath.join(folder, name))
        entry = {"name": name, "records": state["records"], "bytes": size, "sha256": digest}
        committed["shards"].append(entry)
        committed["skipped"] += state["skipped"]  # with its shard: a resumed pack skips them again
        committed["end"] = end
        place.write_json(posixpath.join(folder, PROGRESS), committed)
        state.update(writer=None, file=None, records=0, bytes=0.0, skipped=[])

    encoded = _encoded(tasks, len(order) - begin, workers)
    try:
        for done, (path, label, index, data, reason) in enumerate(encoded, start=begin + 1):
            if data is None:
                if on_bad_image == "error":
                    raise BadImageError(path, reason)
                state["skipped"].append((path, reason))
            else:
                if state["writer"] is None:
                    state["file"] = staging / f"{len(committed['shards']):05d}.tfrecord.partial"
                    state["writer"] = tf.io.TFRecordWriter(str(state["file"]))
                state["writer"].write(_example(data, label, path, index))
                _note_size(committed, jpeg_size(data))
                state["records"] += 1
                state["bytes"] += len(data)
            full = state["bytes"] >= spec.shard_mb * 2**20
            if state["writer"] is not None and (full or done == len(order)):
                commit(done)
            bar.update(done)
    finally:
        bar.close()
        if state["writer"] is not None:
            state["writer"].close()
    if committed["end"] < len(order):  # the last images were all skipped: nothing left to commit
        committed["skipped"] += state["skipped"]
        committed["end"] = len(order)
        place.write_json(posixpath.join(folder, PROGRESS), committed)


def _note_size(committed: dict, size: tuple[int, int] | None) -> None:
    """Keep the stored sizes met, up to a few, so a reader knows when every image is one size."""
    sizes = committed["sizes"]
    if sizes != "mixed" and list(size) not in sizes:
        committed["sizes"] = sizes + [list(size)] if len(sizes) < 4 else "mixed"
