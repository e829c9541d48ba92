"""keras.utils.PyDataset (formerly Sequence): indexed batches decoded by worker threads or processes."""

from __future__ import annotations

import gc
import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np
from keras.utils import PyDataset

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder, aligned_empty
from loaderlab.utils.system import usable_cores

# Keras 3.15's OrderedEnqueuer.stop() drains its queue with get(timeout=0.1): every epoch ends with
# its workers idle that long (keras/src/trainers/data_adapters/py_dataset_adapter.py).
KERAS_EPOCH_END_WAIT_S = 0.1


class BatchRing:
    """Preallocated batch arrays handed out in turn, each reused only `size` batches later."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        self.shape = shape
        self._slots: list[np.ndarray | None] = [None] * size
        self._next = 0
        self._lock = threading.Lock()  # workers take slots concurrently

    def __len__(self) -> int:
        return len(self._slots)

    def take(self) -> np.ndarray:
        """The next slot (allocated on first use), 64-byte aligned so TensorFlow adopts it without a copy."""
        with self._lock:
            i, self._next = self._next, (self._next + 1) % len(self._slots)
            if self._slots[i] is None:
                self._slots[i] = aligned_empty(self.shape)
            return self._slots[i]


class PathBatches(PyDataset):
    """Batch i of the split, decoded on demand; reshuffled at the end of every epoch.

    With worker threads, batches are decoded into a ring of preallocated arrays. Keras' enqueuer
    starts batch j only once it has taken batch j - max_queue_size - 1 off its queue, so batch
    j - max_queue_size - 2 has been handed to TensorFlow, which then asked for the next. A ring of
    max_queue_size + workers + 2 slots leaves workers + 1 more batches of margin before a slot is
    rewritten. A caller that indexes the dataset itself and keeps batches must copy them.

    At the end of every epoch Keras stops its enqueuer and waits on an empty queue, with no public
    way around it; so once the last batch is decoded, the next epoch's first batches (as many as
    keep `workers` threads busy through that wait) are decoded in threads of our own, and served
    from there; not after the last epoch, which LastEpochHint tells it.
    """

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
        self._next_order: np.ndarray | None = None  # drawn early when the next epoch starts early
        self._epoch = 0  # a training pass's augment is drawn for it
        self.ring: BatchRing | None = None
        self._ahead: dict[int, Future] = {}  # index -> the next epoch's batch, decoding or done
        self._ahead_order: np.ndarray | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._image_s = 0.0  # decode time per image in the latest batch
        self.look_ahead = True  # decode the next epoch's first batches early; off in the last epoch
        if not self.use_multiprocessing:  # worker processes return pickled copies: nothing to reuse
            slots = self.max_queue_size + max(self.workers, 1) + 2
            self.ring = BatchRing(slots, (batch_size, *decoder.spec.shape))

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def _decode(
        self, order: np.ndarray, index: int, out: np.ndarray | None, epoch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        idx = order[index * self.batch_size : (index + 1) * self.batch_size]
        paths, labels = [self.split.paths[i] for i in idx], self.split.labels[idx]
        indices = idx if self.shuffle else None  # a training batch: augment drawn for it
        batch = self.decoder.batch(paths, labels, out=out, indices=indices, epoch=epoch)
        self._image_s = (time.perf_counter() - start) / max(len(idx), 1)  # the latest: guess of the next
        return batch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            ahead = self._ahead.pop(index, None) if self._order is self._ahead_order else None
        if ahead is not None:
            batch = ahead.result()
        else:
            out = self.ring.take() if self.ring is not None else None
            batch = self._decode(self._order, index, out, self._epoch)
        if index == len(self) - 1 and self.ring is not None and self.look_ahead:
            with self._lock:
                self._start_next_epoch()
        return batch

    def _start_next_epoch(self) -> None:
        """Decode the next epoch's first batches now, in its order, while Keras winds this one down."""
        if self.shuffle and self._next_order is None:
            self._next_order = self._rng.permutation(len(self.split))
        order = self._next_order if self.shuffle else self._order
        self._pool = self._pool or ThreadPoolExecutor(self.workers, thread_name_prefix="next-epoch")
        # Fresh arrays, not ring slots: they are used only after the ring has moved on.
        # Enough to keep every worker busy through Keras' wait, and never more than its queue holds.
        busy = math.ceil(KERAS_EPOCH_END_WAIT_S / max(self._image_s * self.batch_size, 1e-3)) + 1
        ahead = min(self.workers * busy, self.max_queue_size, len(self))
        epoch = self._epoch + 1
        self._ahead = {i: self._pool.submit(self._decode, order, i, None, epoch) for i in range(ahead)}
        self._ahead_order = order

    def on_epoch_end(self) -> None:
        with self._lock:
            self._epoch += 1
        if self.shuffle:
            with self._lock:
                self._order = (
                    self._next_order
                    if self._next_order is not None
                    else self._rng.permutation(len(self.split))
                )
                self._next_order = None

    def close(self) -> None:
        """End what serves this dataset: Keras' enqueuer (a fit that raised leaves its feeder thread
        blocked on a full queue, holding its pool and our ring), the look-ahead, and the ring."""
        for enqueuer in _running_enqueuers(self):
            _stop_enqueuer(enqueuer)
        with self._lock:
            self.look_ahead = False
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            self._ahead, self._ahead_order, self.ring = {}, None, None

    def __getstate__(self) -> dict:  # for spawned worker processes: no lock, pool or pending batches
        return {**self.__dict__, "_lock": None, "_pool": None, "_ahead": {}, "_ahead_order": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


class LastEpochHint(keras.callbacks.Callback):
    """Turns the look-ahead off for the last epoch, when no next epoch will use it."""

    def __init__(self, batches: PathBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.look_ahead = epoch + 1 < self.params.get("epochs", epoch + 2)


def _running_enqueuers(dataset: PyDataset) -> list:
    """Keras' enqueuers still serving this dataset (Keras keeps no public handle on them)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetEnqueuer

    return [
        o for o in gc.get_objects()
        if isinstance(o, PyDatasetEnqueuer) and o.py_dataset is dataset and o.is_running()
    ]  # fmt: skip


def _stop_enqueuer(enqueuer, timeout_s: float = 30.0) -> None:
    """Keras' own stop (it waits for the batches in flight), with a deadline: a dead worker process's
    batch never comes. Then drop the batches it kept for a next epoch that will not come."""
    thread = threading.Thread(target=enqueuer.stop, name="enqueuer-stop", daemon=True)
    thread.start()
    thread.join(timeout_s)
    while True:
        try:
            enqueuer.ready_queue.get_nowait()
        except queue.Empty:
            break


class SequenceLoader(Loader):
    """Parallel decode in `workers` threads (None: one per usable core), or in processes."""

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
        batches = PathBatches(split, decoder, batch_size, training, seed, **self.pydataset_kwargs)
        return Feed(x=batches, on_close=batches.close, callbacks=[LastEpochHint(batches)])
