"""The baseline: decode every image into one array up front, as most first versions do."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.utils.system import MB, usable_cores

_CHUNK = 16  # images per thread-pool task


class InsufficientMemoryError(MemoryError):
    """The in-memory array would not fit; the message gives both figures."""


def available_memory() -> int:
    """Bytes the machine can give without swapping."""
    return psutil.virtual_memory().available


class InMemoryLoader(Loader):
    """Holds the whole split as a uint8 array; model.fit batches and shuffles it."""

    name = "inmemory"
    streaming = False

    COPIES_IN_FIT = 2  # fit copies the array into a tensor, so the run holds it twice (docs/benchmarks.md)

    def __init__(self, memory_fraction: float = 0.7):
        self.memory_fraction = memory_fraction  # the rest is left to TensorFlow and the model

    def check_fits(self, num_images: int, decoder: ImageDecoder) -> int:
        """Return the array's bytes, or raise before anything is allocated."""
        array = num_images * decoder.spec.nbytes
        needed = self.COPIES_IN_FIT * array
        available = available_memory()
        budget = int(available * self.memory_fraction)
        if needed > budget:
            raise InsufficientMemoryError(
                f"loader=inmemory needs about {needed / MB:,.0f} MB for {num_images} decoded images of "
                f"{decoder.spec.shape} uint8 (a {array / MB:,.0f} MB array, which fit copies once more), "
                f"but only {available / MB:,.0f} MB is available (budget {self.memory_fraction:.0%} of it: "
                f"{budget / MB:,.0f} MB). Choose a streaming loader: loader=tfdata, loader=sequence or "
                "loader=generator keep only file paths in memory."
            )
        return array

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """Decode the whole split into memory (threads: OpenCV releases the GIL)."""
        if training and decoder.augment.at_decode:
            raise ValueError(
                "loader=inmemory decodes every image once, before training, so nothing can be drawn per "
                "epoch at the decode: set augment=layers (in the model) or choose a streaming loader "
                f"(loader=tfdata). Received: augment={decoder.augment.kind}"
            )
        self.check_fits(len(split), decoder)
        images = np.empty((len(split), *decoder.spec.shape), dtype=np.uint8)
        keep = np.ones(len(split), dtype=bool)

        def load(start: int) -> None:
            for i in range(start, min(start + _CHUNK, len(split))):
                keep[i] = decoder.decode(split.paths[i], out=images[i]) is not None  # in place: no copy

        # Runs of images per task: a future per image costs a measurable share of the rate.
        with ThreadPoolExecutor(usable_cores()) as pool:
            list(pool.map(load, range(0, len(split), _CHUNK)))
        if not keep.all():
            images = images[keep]
        return Feed(x=images, y=split.labels[keep], batch_size=batch_size)
