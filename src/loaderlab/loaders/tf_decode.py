"""The preprocessing spec in TensorFlow ops, for pipelines that must not call Python per image.

The ops follow decode.decode_resize: a JPEG decodes at the same libjpeg scale (tf.io.decode_jpeg's
`ratio`, read from the header by tf.image.extract_jpeg_shape) with INTEGER_ACCURATE, libjpeg's
ISLOW IDCT as in OpenCV, so the decoded pixels are identical; then RGB or grey, bilinear resize with
half-pixel centres, rounded to uint8. They run in TensorFlow's threads without the GIL, and on
tf.data service workers, where a Python function cannot travel.
"""

from __future__ import annotations

import tensorflow as tf

from loaderlab.loaders.decode import JPEG_SCALES, ImageSpec

_RATIOS = (*JPEG_SCALES, 1)  # switch_case branch i decodes at 1/_RATIOS[i]


def _decode_jpeg(data: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """A JPEG at the largest reduction whose output still covers the spec on both sides (as jpeg_scale)."""

    def at(ratio: int):
        return lambda: tf.io.decode_jpeg(
            data, channels=spec.channels, ratio=ratio, dct_method="INTEGER_ACCURATE"
        )

    if not spec.scaled_decode:
        return at(1)()
    size = tf.image.extract_jpeg_shape(data)[:2]  # reads the header only
    target = tf.constant([spec.height, spec.width], tf.int32)
    # libjpeg's output side at 1/n is ceil(side / n); the last entry (ratio 1) always fits.
    fits = [tf.reduce_all((size + n - 1) // n >= target) for n in JPEG_SCALES] + [tf.constant(True)]
    branch = tf.argmax(tf.cast(tf.stack(fits), tf.int32), output_type=tf.int32)  # the first that fits
    return tf.switch_case(branch, [at(n) for n in _RATIOS])


def tf_decode_resize_data(data: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """Encoded file bytes (JPEG, PNG or BMP) to uint8 HWC at spec's size."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg(data, spec),
        lambda: tf.io.decode_image(data, channels=spec.channels, expand_animations=False),
    )
    # Float in: TF's bilinear kernel is markedly slower on uint8 input, for the same values out.
    image = tf.image.resize(tf.cast(image, tf.float32), (spec.height, spec.width), antialias=False)
    # A bilinear mix of values in [0, 255] stays in range: round and cast, no clip needed.
    return tf.ensure_shape(tf.cast(tf.round(image), tf.uint8), spec.shape)


def tf_decode_resize(path: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """One file's path to uint8 HWC at spec's size."""
    return tf_decode_resize_data(tf.io.read_file(path), spec)
