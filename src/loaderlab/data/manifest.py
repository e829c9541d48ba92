"""The manifest: the only per-image state a streaming loader keeps in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # Keras' formats; a GIF's first frame


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

    def sample(self, count: int, seed: int) -> Split:
        """`count` of this split's images (all of them if fewer), drawn with `seed`, in their order."""
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:count])
        return Split(tuple(self.paths[i] for i in keep), self.labels[keep])


@dataclass(frozen=True)
class Manifest:
    """Train and validation splits plus the class names that labels index."""

    train: Split
    val: Split
    class_names: tuple[str, ...]
    test: Split | None = None  # held out, evaluated once with the best checkpoint; None: no test split

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
    test_fraction: float = 0.0,
) -> Manifest:
    """Split per class with a seeded shuffle, so every class is in every split.

    Validation takes the first share of each class's shuffled images and test the next, so a test
    split leaves the validation split as it was without one.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise DatasetError(
            f"data.test_fraction must be at least 0 and leave images for training beside "
            f"data.val_fraction={val_fraction}. Received: test_fraction={test_fraction}"
        )
    labels = np.asarray(labels, dtype=np.int32)
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])  # train, val, test
    for label, name in enumerate(class_names):
        idx = np.flatnonzero(labels == label)
        n_val = int(round(len(idx) * val_fraction))
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) < 2 or n_val == 0 or n_val + n_test >= len(idx) or (test_fraction and not n_test):
            raise DatasetError(
                f"Class '{name}' has {len(idx)} image(s): data.val_fraction={val_fraction} and "
                f"data.test_fraction={test_fraction} leave it empty in a split. Add images to the class, "
                "change the fractions, or give separate sets with data.val_root or data.test_root."
            )
        idx = rng.permutation(idx)
        parts[1].extend(idx[:n_val])
        parts[2].extend(idx[n_val : n_val + n_test])
        parts[0].extend(idx[n_val + n_test :])
    train_idx, val_idx, test_idx = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    return Manifest(
        train=make_split([paths[i] for i in train_idx], labels[train_idx]),
        val=make_split([paths[i] for i in val_idx], labels[val_idx]),
        class_names=tuple(class_names),
        test=make_split([paths[i] for i in test_idx], labels[test_idx]) if test_fraction else None,
    )


def assemble(
    train: tuple[Sequence[str], Sequence[int]],
    class_names: Sequence[str],
    val: tuple[Sequence[str], Sequence[int]] | None,
    test: tuple[Sequence[str], Sequence[int]] | None,
    fractions: tuple[float, float, int],
    keys: tuple[str, str, str],
) -> Manifest:
    """Train, validation and test from separate sets where given, else split off by seed.

    fractions: (val_fraction, test_fraction, split_seed); keys: the config keys of the three sets,
    e.g. ("data.root", "data.val_root", "data.test_root"), for the message.
    """
    val_fraction, test_fraction, split_seed = fractions
    if test is not None:
        test_fraction = 0.0
    if val is None:
        manifest = stratified_split(*train, class_names, val_fraction, split_seed, test_fraction)
    elif test_fraction:
        raise DatasetError(
            f"data.test_fraction splits {keys[0]}, which {keys[1]} leaves whole: give {keys[2]} instead."
        )
    else:
        manifest = Manifest(make_split(*train), make_split(*val), tuple(class_names))
    return manifest if test is None else dataclasses.replace(manifest, test=make_split(*test))
