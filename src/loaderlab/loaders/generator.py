"""A plain Python generator given to model.fit: the old fit_generator approach."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder


def epoch_batches(
    split: Split, decoder: ImageDecoder, batch_size: int, shuffle: bool, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches, one pass per epoch, reshuffled each pass; one thread decodes. A shuffled
    (training) pass draws the decoder's augment for its epoch."""
    rng = np.random.default_rng(seed)
    for epoch in itertools.count():
        order = rng.permutation(len(split)) if shuffle else np.arange(len(split))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            paths, labels = [split.paths[i] for i in idx], split.labels[idx]
            yield decoder.batch(paths, labels, indices=idx if shuffle else None, epoch=epoch)


class GeneratorLoader(Loader):
    """Single-threaded: simple, and as slow as one core decodes."""

    name = "generator"

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """An endless generator; fit reads `steps` batches per epoch."""
        return Feed(
            x=epoch_batches(split, decoder, batch_size, shuffle=training, seed=seed),
            steps=num_batches(len(split), batch_size),
        )
