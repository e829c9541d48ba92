"""Reading a pack that lives in a store: its shards fetched whole into a bounded local cache, or,
when the pack is larger than the cache allows, streamed with large sequential reads.

Either way the reader makes a few requests per shard, never one per image.
"""

from __future__ import annotations

import posixpath
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from loaderlab.data import pack_root
from loaderlab.data.pack import Pack, PackError
from loaderlab.data.pack_root import PackRoot, cache_folder, file_sha256
from loaderlab.data.storage import StoreError, explain, is_url

GB = 2**30
STREAM_BLOCK = 16 * 2**20  # bytes per read when a shard is streamed


def cached_bytes(skip: Path | None = None) -> int:
    """What the cache holds now, but for one pack's folder."""
    return sum(f.stat().st_size for f in pack_root.PACK_CACHE.glob("*/*/*.tfrecord") if f.parent != skip)


def local_shards(pack: Pack, place: PackRoot, cache_gb: float) -> list[str] | None:
    """Local paths of the pack's shards: its own when the root is a folder, else cached copies
    (fetched now where missing); None when the pack does not fit in what is left of `cache_gb`."""
    if not place.remote:
        return list(pack.shards)
    folder = cache_folder(place.url, pack.fingerprint)
    if pack.nbytes + cached_bytes(skip=folder) > cache_gb * GB:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    wanted = []
    for shard in pack.meta["shards"]:
        local = folder / shard["name"]
        if not (local.is_file() and local.stat().st_size == shard["bytes"]):
            wanted.append(shard)
    if wanted:  # fetched concurrently (fsspec's batched get), each shard whole
        partial = [str(folder / f"{s['name']}.partial") for s in wanted]
        try:
            place.fs.get([posixpath.join(pack.folder, s["name"]) for s in wanted], partial)
        except Exception as e:  # noqa: BLE001  every store raises its own kind
            raise StoreError(explain(pack.folder, e)) from None
        for shard, path in zip(wanted, partial, strict=True):
            if file_sha256(Path(path)) != shard["sha256"]:
                Path(path).unlink()
                raise PackError(
                    f"Shard {shard['name']} of pack {pack.folder} does not match its checksum. "
                    f"Check it with python src/packs.py verify --root {place.url}."
                )
            Path(path).replace(folder / shard["name"])
    return [str(folder / shard["name"]) for shard in pack.meta["shards"]]


def drop_cached(root_url: str, fingerprint: str) -> int:
    """Delete this machine's copy of a pack; the bytes freed."""
    folder = cache_folder(root_url, fingerprint)
    freed = sum(f.stat().st_size for f in folder.glob("*")) if folder.is_dir() else 0
    shutil.rmtree(folder, ignore_errors=True)
    return freed


def stream_records(place: PackRoot, url: str) -> Iterator[bytes]:
    """A shard's records read straight from the store in STREAM_BLOCK reads (TFRecord framing:
    length, its CRC, data, the data's CRC; the CRCs are not checked here, `packs.py verify` checks
    the whole shard's checksum)."""
    torn = f"Shard {url} ends inside a record: check it with python src/packs.py verify --root {place.url}."
    with place.fs.open(url, "rb", block_size=STREAM_BLOCK, cache_type="readahead") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8]) if len(header) == 12 else (-1,)
            data = f.read(length) if length >= 0 else b""
            if length < 0 or len(data) < length or len(f.read(4)) < 4:
                raise PackError(torn)
            yield data


def stored_images(pack: Pack, place: PackRoot | None = None) -> list[bytes]:
    """A pack's own JPEGs, in the order written (a store's pack streamed from `place`)."""
    import tensorflow as tf

    if is_url(pack.folder):
        place = place or PackRoot(posixpath.dirname(pack.folder))
        records = [r for url in pack.shards for r in stream_records(place, url)]
    else:
        records = [r.numpy() for r in tf.data.TFRecordDataset(pack.shards)]
    return [tf.train.Example.FromString(r).features.feature["image"].bytes_list.value[0] for r in records]
