"""How a pack's records are made: each source decoded through the shared spec at the stored size,
re-encoded as JPEG by a pool of processes, and wrapped as a tf.train.Example."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from typing import TYPE_CHECKING

import cv2

from loaderlab.data.storage import Storage, is_url
from loaderlab.loaders.decode import BadImageError, ImageSpec, decode_bytes, read_file, remote_bytes
from loaderlab.loaders.headers import image_size

if TYPE_CHECKING:
    from loaderlab.data.pack import PackSpec

SAMPLING = {  # chroma subsampling by name
    "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}


def _sources(
    items: list[tuple[str, int, int]], spec: PackSpec, storage: Storage, chunk: int = 256
) -> Iterator[tuple[str, int, int, PackSpec, bytes | Exception | None]]:
    """Encoding tasks of (path, label, index in the split): a local file is read by its worker; URLs
    are fetched here, a chunk at once."""
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        urls = [path for path, _, _ in part if is_url(path)]
        fetched = dict(zip(urls, storage.read_many(urls), strict=True)) if urls else {}
        for path, label, index in part:
            yield path, label, index, spec, fetched.get(path)


def _encoded(tasks: Iterator, count: int, workers: int) -> Iterator[tuple[str, int, int, bytes | None, str]]:
    """(path, label, index, JPEG bytes or None, reason) of `count` tasks in order, encoded by `workers`
    processes."""
    if workers <= 1 or count < 64:
        yield from map(_encode_one, tasks)
        return
    # spawn, not fork: the parent may already run TensorFlow threads.
    with mp.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield from pool.imap(_encode_one, tasks, chunksize=32)


def stored_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(height, width) with the shorter side at `side`, aspect kept; a smaller image keeps its size."""
    height, width = size
    shorter = min(height, width)
    if shorter <= side:
        return height, width
    return max(1, round(height * side / shorter)), max(1, round(width * side / shorter))


def _encode_one(
    task: tuple[str, int, int, PackSpec, bytes | Exception | None],
) -> tuple[str, int, int, bytes | None, str]:
    """One source (a file, or a URL's fetched bytes) through the shared spec at its stored size, then JPEG."""
    path, label, index, spec, fetched = task
    try:
        data = read_file(path) if fetched is None else remote_bytes(path, fetched)
        size = image_size(data)
        if not size or not all(size):
            raise BadImageError(path, "no image size in its header (truncated, corrupt or another format)")
        height, width = stored_size(size, spec.side)
        image = decode_bytes(data, ImageSpec(height, width, spec.channels, spec.scaled_decode), name=path)
    except BadImageError as e:
        return path, label, index, None, e.reason
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
        return path, label, index, None, "could not be re-encoded"
    return path, label, index, encoded.tobytes(), ""


def _example(image: bytes, label: int, path: str, index: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),  # draws augment
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
