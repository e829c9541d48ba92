"""VGGPreprocess, the preprocessing layer of VGG16 models saved before model=vgg16 moved onto
models/backbone.py: registered still, so that their files and MLflow Models keep loading."""

from __future__ import annotations

import keras
from keras.applications import vgg16


@keras.saving.register_keras_serializable(package="loaderlab")
class VGGPreprocess(keras.layers.Layer):
    """uint8 RGB (or grey, repeated to RGB) -> VGG16's caffe-style BGR, mean-subtracted input."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return vgg16.preprocess_input(x)
