"""The manifest: the only per-image state a streaming loader keeps in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A dataset or its config cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Split:
    """File paths and integer labels of one split."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def drop(self, bad_paths: set[str]) -> Split:
        """Return this split without the given paths."""
        keep = [i for i, p in enumerate(self.paths) if p not in bad_paths]
        return Split(tuple(self.paths[i] for i in keep), self.labels[keep])


@dataclass(frozen=True)
class Manifest:
    """Train and validation splits plus the class names that labels index."""

    train: Split
    val: Split
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_split(paths: Sequence[str], labels: Sequence[int]) -> Split:
    """Build a Split from parallel sequences."""
    return Split(tuple(str(p) for p in paths), np.asarray(labels, dtype=np.int32))


def stratified_split(
    paths: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    val_fraction: float,
    seed: int,
) -> Manifest:
    """Split per class with a seeded shuffle, so every class is in both splits."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    labels = np.asarray(labels, dtype=np.int32)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label, name in enumerate(class_names):
        idx = np.flatnonzero(labels == label)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) < 2 or n_val == 0 or n_val == len(idx):
            raise DatasetError(
                f"Class '{name}' has {len(idx)} image(s): data.val_fraction={val_fraction} leaves it "
                "empty in the train or validation split. Add images to the class, change "
                "data.val_fraction, or give a separate validation set with data.val_root."
            )
        idx = rng.permutation(idx)
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return Manifest(
        train=make_split([paths[i] for i in train_idx], labels[train_idx]),
        val=make_split([paths[i] for i in val_idx], labels[val_idx]),
        class_names=tuple(class_names),
    )
