"""Layers shared by the models; preprocessing lives in the model, so loaders feed raw uint8."""

from __future__ import annotations

from collections.abc import Mapping

import keras


def augmentation(layers: Mapping | None, value_range: tuple[float, float]) -> list[keras.layers.Layer]:
    """augment=layers: Keras' random layers (training only) from the knobs in conf/augment/layers.yaml;
    none for any other augment. `value_range`: the pixel range where they are applied."""
    if not layers:
        return []
    found = []
    if layers.get("flip"):
        found.append(keras.layers.RandomFlip(layers["flip"]))
    if layers.get("rotation"):
        found.append(keras.layers.RandomRotation(layers["rotation"]))
    if layers.get("zoom"):
        found.append(keras.layers.RandomZoom(layers["zoom"]))
    if layers.get("translation"):
        found.append(keras.layers.RandomTranslation(layers["translation"], layers["translation"]))
    if layers.get("contrast"):
        found.append(keras.layers.RandomContrast(layers["contrast"], value_range=value_range))
    return found
