"""Datasets: every source becomes a Manifest of paths, labels, class names and a split."""

from loaderlab.data.manifest import DatasetError, Manifest, Split

__all__ = ["DatasetError", "Manifest", "Split"]
