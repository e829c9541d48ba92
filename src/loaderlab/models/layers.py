"""Layers shared by the models; preprocessing lives in the model, so loaders feed raw uint8."""

from __future__ import annotations

import keras


def augmentation(enabled: bool) -> list[keras.layers.Layer]:
    """Light augmentation that keeps the synthetic shapes' classes (flips and small shifts)."""
    if not enabled:
        return []
    return [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.1, 0.1)]
