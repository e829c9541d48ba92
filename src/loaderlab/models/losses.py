"""Losses a saved model may name; here so that register_all() registers them before a model file loads."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="loaderlab")
class SmoothedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing, which Keras 3's sparse loss does not take:
    the labels one-hot encoded, then keras.losses.categorical_crossentropy(label_smoothing=...)."""

    def __init__(
        self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_categorical_crossentropy", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
