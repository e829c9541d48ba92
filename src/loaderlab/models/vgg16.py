"""keras.applications.VGG16 without its top, with its own preprocess_input and a new head."""

from __future__ import annotations

import keras
from keras.applications import vgg16

from loaderlab.models.layers import augmentation


@keras.saving.register_keras_serializable(package="loaderlab")
class VGGPreprocess(keras.layers.Layer):
    """uint8 RGB (or grey, repeated to RGB) -> VGG16's caffe-style BGR, mean-subtracted input."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return vgg16.preprocess_input(x)


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None = None,
    dropout: float = 0.5,
    augment: bool = True,
    trainable_base: bool = True,
) -> keras.Model:
    """VGG16 convolutional base (weights=None or 'imagenet'/a path) plus a pooled softmax head."""
    height, width, _ = input_shape  # under 32 px: keras.applications raises; check_config stops it sooner
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = VGGPreprocess()(inputs)
    for layer in augmentation(augment):
        x = layer(x)
    base = vgg16.VGG16(include_top=False, weights=weights, input_shape=(height, width, 3))
    base.trainable = trainable_base
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vgg16")
