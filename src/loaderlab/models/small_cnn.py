"""A small CNN that trains in seconds per epoch on a CPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from loaderlab.models.layers import augmentation


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.2,
    bn_momentum: float = 0.9,
    augment: Mapping | None = None,
    pooling: str = "max",
) -> keras.Model:
    """Conv-BN-ReLU blocks with pooling, global max (or average) pooling and a softmax head;
    `augment`: augment=layers' knobs (models/layers.py), or None."""
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg'. Received: pooling={pooling!r}")
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for layer in augmentation(augment, (0.0, 1.0)):
        x = layer(x)
    for f in filters:
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    # max: a shape is told by a few local features (a corner, a curve); an average over the image dilutes them
    pool = keras.layers.GlobalMaxPooling2D() if pooling == "max" else keras.layers.GlobalAveragePooling2D()
    x = pool(x)
    x = keras.layers.Dropout(dropout)(x)
    # float32 under mixed precision too: a softmax in float16 rounds small probabilities to zero
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
