"""One training pass of one loader over the first N images, in a process of its own: the memory it
added, printed as one JSON line. tests/test_loaders.py runs it, so that nothing else the test session
did in its own process (earlier jobs, their threads and freed arenas) is counted.

python tests/memory_probe.py <loader> <dataset root> <images> <pack root> <input size>
"""

from __future__ import annotations

import json
import os
import sys

from helpers import collect, make_named_loader, one_pass
from loaderlab.data.folder import folder_manifest
from loaderlab.data.manifest import make_split
from loaderlab.loaders import ImageDecoder, ImageSpec
from loaderlab.monitor import MemorySampler

RESULT_PREFIX = "MEMORY_PROBE "


def main(name: str, root: str, images: int, pack_root: str, size: int) -> None:
    """Warm up on the validation split, then sample the whole process tree over one training pass."""
    import tensorflow as tf  # noqa: F401  loaded before the baseline, as in a training run

    manifest = folder_manifest(root, val_fraction=0.1)
    train = make_split(manifest.train.paths[:images], manifest.train.labels[:images])
    assert len(train) == images, f"the dataset has only {len(manifest.train)} training images"
    spec = ImageSpec(size, size, 3)
    loader = make_named_loader(name, pack_root)
    collect(loader.feed(manifest.val, ImageDecoder(spec), 16, training=False))  # first-use costs
    if name == "packed":  # reading is measured; writing the pack is a one-time cost of its own
        loader.pack(train, ImageDecoder(spec), training=True)
    sampler = MemorySampler(interval_s=0.01)
    baseline = sampler.start().sample()
    feed = loader.feed(train, ImageDecoder(spec), 16, training=True)
    count = sum(len(labels) for _, labels in one_pass(feed))
    growth = sampler.stop() - baseline
    result = {"images": count, "growth_bytes": growth, "decoded_bytes": count * spec.nbytes}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    os._exit(0)  # no teardown: a loader's worker threads may abort it after the result is out


if __name__ == "__main__":
    name, root, images, pack_root, size = sys.argv[1:]
    main(name, root, int(images), pack_root, int(size))
