"""The decode limit: the shared decoder alone, one thread per core, on what an entry decodes.

Under an augment drawn at the decode (`--augment flip|rrc`), the limit decodes the same windows with
the same draws (epoch 0): for rrc, each JPEG through OpenCV at the smallest scale that covers its
crop's output, whole, then cut; tf.io.decode_and_crop_jpeg decodes the window only, so a graph
pipeline may beat this limit (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def reads(split: Any) -> str:
    """How the limit gets its bytes: from files in the pass, or a store's objects fetched beforehand."""
    from loaderlab.data.storage import is_url

    return "fetched beforehand" if split.paths and is_url(split.paths[0]) else "file read in the pass"


def limit_sources(split: Any, decoder: Any) -> list:
    """What the limit decodes: local paths, read as it decodes; or a store's objects, fetched beforehand
    (the limit is the cores' decode rate, not the store's)."""
    from loaderlab.data.storage import is_url
    from loaderlab.loaders.decode import remote_bytes

    if not split.paths or not is_url(split.paths[0]):
        return list(split.paths)
    fetched = []
    for start in range(0, len(split), 256):
        chunk = split.paths[start : start + 256]
        fetched += map(remote_bytes, chunk, decoder.storage.read_many(chunk))
    return fetched


def stored_limit_pass(loader: Any, split: Any, decoder: Any) -> Callable[[], int]:
    """One thread decoding the JPEGs of the loader's pack of `split` (written by its feed already)."""
    from loaderlab.data.pack_cache import stored_images
    from loaderlab.data.pack_root import PackRoot

    place = PackRoot(loader.root, decoder.storage)
    stored = stored_images(loader.pack(split, decoder, training=True), place)
    return decode_limit_pass(stored, decoder)


def _draws(decoder: Any, count: int) -> list:
    """Each source's draws for epoch 0 where the decoder's augment is drawn at the decode, else None."""
    if not decoder.augment.at_decode:
        return [None] * count
    return list(decoder.augment.draws(0, np.arange(count)))


def _decode_part(sources: Sequence, draws: Sequence, decoder: Any) -> None:
    from loaderlab.loaders.decode import BadImageError, decode_bytes, decode_resize

    for source, u in zip(sources, draws, strict=True):
        try:
            if isinstance(source, str):
                decode_resize(source, decoder.spec, augment=decoder.augment, u=u)
            else:
                decode_bytes(source, decoder.spec, augment=decoder.augment, u=u)
        except BadImageError:
            pass  # a user's bad file costs the limit what trying it costs, and stops nothing


def decode_limit_pass(sources: list, decoder: Any) -> Callable[[], int]:
    """One pass of the shared decode over every source, in this one thread."""
    import cv2

    cv2.setNumThreads(1)  # one core means one thread: OpenCV's own pool would inflate the rate
    draws = _draws(decoder, len(sources))

    def run_pass() -> int:
        _decode_part(sources, draws, decoder)
        return len(sources)

    return run_pass


def decode_threads_pass(sources: list, decoder: Any, cores: int) -> Callable[[], int]:
    """The same pass, `cores` plain threads at once (OpenCV frees the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    draws = _draws(decoder, len(sources))

    def run_pass() -> int:
        parts = [sources[k::cores] for k in range(cores)], [draws[k::cores] for k in range(cores)]
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(_decode_part, *parts, [decoder] * cores))
        return len(sources)

    return run_pass
