"""keras.utils.PyDataset (formerly Sequence): indexed batches decoded by worker threads or processes."""

from __future__ import annotations

import numpy as np
from keras.utils import PyDataset

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.utils.system import usable_cores


class PathBatches(PyDataset):
    """Batch i of the split, decoded on demand; reshuffled at the end of every epoch."""

    def __init__(
        self,
        split: Split,
        decoder: ImageDecoder,
        batch_size: int,
        shuffle: bool,
        seed: int,
        **pydataset_kwargs,
    ):
        super().__init__(**pydataset_kwargs)
        self.split, self.decoder, self.batch_size, self.shuffle = split, decoder, batch_size, shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(split)) if shuffle else np.arange(len(split))

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.decoder.batch([self.split.paths[i] for i in idx], self.split.labels[idx])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.split))


class SequenceLoader(Loader):
    """Parallel decode in `workers` threads, or processes with use_multiprocessing=true."""

    name = "sequence"

    def __init__(
        self, workers: int | None = None, use_multiprocessing: bool = False, max_queue_size: int = 10
    ):
        self.pydataset_kwargs = {
            "workers": workers or usable_cores(),
            "use_multiprocessing": use_multiprocessing,
            "max_queue_size": max_queue_size,
        }

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """A PyDataset over the split; Keras runs its workers."""
        return Feed(x=PathBatches(split, decoder, batch_size, training, seed, **self.pydataset_kwargs))
