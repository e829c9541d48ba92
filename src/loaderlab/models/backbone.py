"""Any keras.applications backbone: its family's own preprocessing inside the model, a new pooled
softmax head, and weights from null, `imagenet` (Keras' own download and cache), a local file, or an
earlier run (training/warm_start.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import keras

from loaderlab.models.layers import augmentation
from loaderlab.utils.errors import ConfigError, error_chain


@keras.saving.register_keras_serializable(package="loaderlab")
class FamilyPreprocess(keras.layers.Layer):
    """uint8 RGB (or grey, repeated to RGB) -> keras.applications.<module>.preprocess_input of it.

    Families built with include_preprocessing (EfficientNetV2, MobileNetV3, ConvNeXt) have an identity
    preprocess_input: their scaling is in the base, which then takes 0-255 floats as given here."""

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._preprocess = getattr(keras.applications, module).preprocess_input

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return self._preprocess(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "module": self.module}


def keras_models_folder() -> Path:
    """Where Keras caches downloaded weights: $KERAS_HOME/models, by default ~/.keras/models."""
    from keras.src.backend.config import keras_home  # Keras' own (private) accessor: what get_file uses

    return Path(os.path.expanduser(keras_home())) / "models"


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    application: str,
    preprocessing: str,
    weights: str | None = None,
    imagenet_file: str | None = None,
    dropout: float = 0.2,
    augment: Mapping | None = None,
    trainable_base: bool = True,
    options: dict | None = None,
) -> keras.Model:
    """keras.applications.<application> without its top, after FamilyPreprocess(<preprocessing>), with
    global average pooling, dropout and a float32 softmax (mixed precision keeps the output float32);
    `augment`: augment=layers' knobs (models/layers.py), applied before the preprocessing, or None.

    A pretrained base keeps its BatchNorm layers in inference mode, frozen or fine-tuned (keras.io's
    transfer-learning guide); a base trained from scratch (weights=None) trains them as any model."""
    height, width, _ = input_shape
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = inputs
    if augment:  # augment=layers, on the pixels in [0, 255], before the family's own preprocessing
        x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(x)
        for layer in augmentation(augment, (0.0, 255.0)):
            x = layer(x)
    x = FamilyPreprocess(preprocessing, dtype="float32", name="preprocess")(x)
    from loaderlab.training.warm_start import is_run_reference

    # An earlier run's weights (runs:/, models:/) are loaded into the whole model after it is built.
    from_run = is_run_reference(weights)
    base = _base(application, None if from_run else weights, imagenet_file, (height, width, 3), options or {})
    base.trainable = trainable_base
    if weights:
        freeze_batchnorm(base)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=application.lower())


def freeze_batchnorm(base: keras.Model) -> None:
    """Every BatchNormalization layer of the base in inference mode, whatever fit passes: Keras 3's
    fit overrides a functional `base(x, training=False)` with training=True (keras-team/keras#20285),
    while a BatchNormalization layer that is not trainable always normalises with its moving
    statistics. Call it again after setting base.trainable, which sets every layer's flag."""
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.Model):
            freeze_batchnorm(layer)


def fetch_imagenet_weights(application: str, imagenet_file: str | None, options: dict | None = None) -> None:
    """Have Keras download the base's imagenet weights into its cache now, before any data is read;
    a ConfigError naming the file and the folder where it cannot (offline)."""
    if _cached(imagenet_file) is None:
        _base(application, "imagenet", imagenet_file, (224, 224, 3), dict(options or {}))


def _cached(imagenet_file: str | None) -> Path | None:
    """The imagenet weights file in Keras' cache under Keras' own name, if it is there."""
    path = keras_models_folder() / imagenet_file if imagenet_file else None
    return path if path is not None and path.is_file() else None


def _base(
    application: str, weights: str | None, imagenet_file: str | None, shape: tuple, options: dict
) -> keras.Model:
    """The base with its weights: a file already in Keras' cache is used as it is (no hash check)."""
    make = getattr(keras.applications, application)
    if weights == "imagenet" and (cached := _cached(imagenet_file)) is not None:
        weights = str(cached)
    try:
        return make(include_top=False, weights=weights, input_shape=shape, **options)
    except Exception as e:
        if weights != "imagenet" or not any(isinstance(c, OSError) for c in error_chain(e)):
            raise
        raise ConfigError(_offline_message(application, imagenet_file, e)) from None


def _offline_message(application: str, imagenet_file: str | None, error: BaseException) -> str:
    # Keras' get_file raises a bare Exception("URL fetch failure on <origin>: ..."): the URL is in its text.
    found = re.search(r"failure on (\S+):", str(error))
    origin = found.group(1) if found else "the URL in Keras' message"
    name = imagenet_file or origin.rsplit("/", 1)[-1]
    return (
        f"model.weights=imagenet: Keras could not download {application}'s weights ({error}). Put the file "
        f"{name} in {keras_models_folder()}/ (from {origin}), or set model.weights to a local weights "
        "file, or to null to train from scratch."
    )
