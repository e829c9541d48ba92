"""The Keras peer as a training loader: keras.utils.image_dataset_from_directory, tf or grain format.

Keras lists a folder itself, so each split is given to it as a folder of links (outputs/ only; the
user's files are read, never written): one link per image, named by its place in the split, so that
Keras' alphanumeric order is the split's and its labels are ours.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.data.storage import is_url
from loaderlab.loaders.base import Feed, Loader
from loaderlab.loaders.decode import ImageDecoder

FORMATS = ("tf", "grain")


class KerasLoader(Loader):
    """Keras' own loader, fed each split through a folder of links; uint8 at the spec's size."""

    name = "keras"

    def __init__(self, format: str = "tf", links_root: str = "outputs/cache/keras_links"):
        if format not in FORMATS:
            raise ValueError(f"loader.format must be one of {list(FORMATS)}. Received: format={format!r}")
        self.format = format
        self.links_root = Path(links_root)

    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """image_dataset_from_directory over the split's links, cast to uint8; shuffled when training."""
        import keras

        spec = decoder.spec
        _check_supported(split, decoder, training, self.format)
        kwargs = {"format": self.format} if self.format != "tf" else {}  # older Keras has no format=
        dataset = keras.utils.image_dataset_from_directory(
            str(self._links(split)),
            labels=[int(v) for v in split.labels],  # in the links' order, which is the split's
            label_mode="int",
            color_mode="rgb" if spec.channels == 3 else "grayscale",
            batch_size=batch_size,
            image_size=(spec.height, spec.width),
            shuffle=training,
            seed=seed,
            crop_to_aspect_ratio=spec.resize == "crop",
            pad_to_aspect_ratio=spec.resize == "pad",
            verbose=False,
            **kwargs,
        )
        if self.format == "grain":
            return Feed(x=dataset.map(_to_uint8_numpy), tags={"keras_format": "grain"})
        import tensorflow as tf

        batches = dataset.map(_to_uint8, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return Feed(x=batches, tags={"keras_format": "tf"})

    def _links(self, split: Split) -> Path:
        """The split's folder of links, made once (atomically: jobs may share it) and reused."""
        names = [f"{i:08d}{os.path.splitext(p)[1].lower()}" for i, p in enumerate(split.paths)]
        targets = [os.path.abspath(p) for p in split.paths]
        key = hashlib.sha256("\n".join(targets).encode()).hexdigest()[:20]
        folder = self.links_root / key
        if folder.is_dir():
            return folder
        scratch = self.links_root / f".{key}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True)
        try:
            for name, target in zip(names, targets, strict=True):
                os.symlink(target, scratch / name)
            os.rename(scratch, folder)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            if not folder.is_dir():  # not another job's folder, made first: a real failure
                raise
        return folder


def _check_supported(split: Split, decoder: ImageDecoder, training: bool, fmt: str) -> None:
    """Refuse what Keras' loader cannot do as the spec does, naming the setting to change."""
    if training and decoder.augment.at_decode:
        raise ValueError(
            "loader=keras draws nothing at the decode: set augment=layers (in the model) or choose "
            f"loader=tfdata for flip/rrc crops. Received: augment={decoder.augment.kind}"
        )
    if decoder.spec.eval_crop is not None:
        raise ValueError(
            "loader=keras has no centre crop: set data.eval_crop=null or choose loader=tfdata. "
            f"Received: data.eval_crop={decoder.spec.eval_crop}"
        )
    if split.paths and is_url(split.paths[0]):
        raise ValueError(
            "loader=keras reads local folders only: choose loader=tfdata for data in a bucket. "
            f"Received: {split.paths[0]}"
        )

    if fmt == "tf" and decoder.spec.resize == "pad":
        # Keras' tf format pads with tf.image.resize_with_pad, its grain format (and the spec, which
        # eval.py and the served model decode with) as keras.ops.image.resize: another band of pixels.
        raise ValueError(
            "loader=keras pads otherwise than the spec in format=tf: set loader.format=grain or "
            "data.resize=crop|squash. Received: data.resize=pad, loader.format=tf"
        )


def _to_uint8(images: Any, labels: Any) -> tuple[Any, Any]:
    """Keras' float pixels, rounded to the uint8 every loader yields."""
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8), labels


def _to_uint8_numpy(batch: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """_to_uint8 for a Grain batch."""
    images, labels = batch
    return np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8), np.asarray(labels, np.int32)
