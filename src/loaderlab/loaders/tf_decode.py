"""The preprocessing spec in TensorFlow ops, for pipelines that must not call Python per image.

The ops follow decode.decode_resize: a JPEG decodes only its window (loaders/augment.py), at the
same libjpeg scale (tf.io.decode_and_crop_jpeg's `ratio`, chosen from the header that
tf.image.extract_jpeg_shape reads) with INTEGER_ACCURATE, libjpeg's ISLOW IDCT as in OpenCV, so the
decoded pixels are identical; then RGB or grey, bilinear resize with half-pixel centres, rounded to
uint8, and the training flip. They run in TensorFlow's threads without the GIL, and on
tf.data service workers, where a Python function cannot travel.
"""

from __future__ import annotations

import math

import tensorflow as tf

from loaderlab.loaders.augment import DRAWS, MASK32, MULTIPLIERS, Augment, cuts_drawn_crop
from loaderlab.loaders.decode import JPEG_SCALES, ImageSpec

_RATIOS = (*JPEG_SCALES, 1)  # switch_case branch i decodes at 1/_RATIOS[i]


def _mul32(x: tf.Tensor, c: int) -> tf.Tensor:
    """augment._mul32 in int64 ops."""
    low = tf.bitwise.bitwise_and(x, 0xFFFF) * c
    high = tf.bitwise.left_shift(tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, 16) * c, 0xFFFF), 16)
    return tf.bitwise.bitwise_and(low + high, MASK32)


def _hash32(x: tf.Tensor) -> tf.Tensor:
    """augment.hash32 in int64 ops: the same bits."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, MULTIPLIERS[0])
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, MULTIPLIERS[1])
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def tf_uniforms(seed: int, epoch: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """augment.uniforms in TensorFlow ops: (len(indices), DRAWS) float64, bit for bit."""
    epoch = tf.bitwise.bitwise_and(tf.cast(epoch, tf.int64), MASK32)
    base = _hash32(tf.bitwise.bitwise_xor(_hash32(tf.constant(seed & MASK32, tf.int64)), epoch))
    per_image = _hash32(
        tf.bitwise.bitwise_xor(base, tf.bitwise.bitwise_and(tf.cast(indices, tf.int64), MASK32))
    )
    salts = tf.constant([k * 0x9E3779B1 & MASK32 for k in range(1, DRAWS + 1)], tf.int64)
    draws = _hash32(tf.bitwise.bitwise_xor(per_image[:, None], salts))
    return tf.cast(tf.bitwise.right_shift(draws, 8), tf.float64) / 2**24


def _floor_half(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(x + 0.5), tf.int32)


def _window(
    size: tf.Tensor, spec: ImageSpec, augment: Augment | None, u: tf.Tensor | None
) -> list[tf.Tensor]:
    """augment.window in TensorFlow ops: [y, x, height, width] int32 of an image of `size`."""
    height, width = size[0], size[1]
    if cuts_drawn_crop(augment, u):
        low, high = augment.scale
        area = tf.cast(height * width, tf.float64) * (low + u[0] * (high - low))
        log_low, log_high = math.log(augment.ratio[0]), math.log(augment.ratio[1])
        aspect = tf.exp(log_low + u[1] * (log_high - log_low))
        crop_w = tf.minimum(width, tf.maximum(1, _floor_half(tf.sqrt(area * aspect))))
        crop_h = tf.minimum(height, tf.maximum(1, _floor_half(tf.sqrt(area / aspect))))
        y = tf.cast(tf.floor(u[3] * tf.cast(height - crop_h + 1, tf.float64)), tf.int32)
        x = tf.cast(tf.floor(u[2] * tf.cast(width - crop_w + 1, tf.float64)), tf.int32)
        return [y, x, crop_h, crop_w]
    y, x, crop_h, crop_w = tf.constant(0), tf.constant(0), height, width
    if spec.resize == "crop":
        crop_h = tf.maximum(1, tf.minimum(height, width * spec.height // spec.width))
        crop_w = tf.maximum(1, tf.minimum(width, height * spec.width // spec.height))
        y, x = (height - crop_h) // 2, (width - crop_w) // 2
    if spec.eval_crop is not None:
        new_h = tf.maximum(1, _floor_half(tf.cast(crop_h, tf.float64) * spec.eval_crop))
        new_w = tf.maximum(1, _floor_half(tf.cast(crop_w, tf.float64) * spec.eval_crop))
        y, x, crop_h, crop_w = y + (crop_h - new_h) // 2, x + (crop_w - new_w) // 2, new_h, new_w
    return [y, x, crop_h, crop_w]


def _scaled(box: list[tf.Tensor], n: int, decoded: tf.Tensor) -> tf.Tensor:
    """augment.scaled_window in TensorFlow ops, as the [y, x, height, width] of a crop_window."""
    y, x, height, width = box
    top, left = y // n, x // n
    bottom = tf.minimum(decoded[0], -(-(y + height) // n))
    right = tf.minimum(decoded[1], -(-(x + width) // n))
    return tf.stack([top, left, bottom - top, right - left])


def _decode_jpeg(data: tf.Tensor, spec: ImageSpec, augment: Augment | None, u: tf.Tensor | None) -> tf.Tensor:
    """A JPEG's window only (decode_and_crop_jpeg), at the largest reduction whose output still covers
    the spec on both sides (as decode.jpeg_scale)."""
    size = tf.image.extract_jpeg_shape(data)[:2]  # reads the header only
    box = _window(size, spec, augment, u)

    def at(n: int):
        decoded = (size + n - 1) // n
        return lambda: tf.io.decode_and_crop_jpeg(
            data, _scaled(box, n, decoded), channels=spec.channels, ratio=n, dct_method="INTEGER_ACCURATE"
        )

    if not spec.scaled_decode:
        return at(1)()
    target = tf.constant([spec.height, spec.width], tf.int32)
    covered = tf.stack(box[2:])
    # libjpeg's output side at 1/n is ceil(side / n); the last entry (ratio 1) always fits.
    fits = [tf.reduce_all((covered + n - 1) // n >= target) for n in JPEG_SCALES] + [tf.constant(True)]
    branch = tf.argmax(tf.cast(tf.stack(fits), tf.int32), output_type=tf.int32)  # the first that fits
    return tf.switch_case(branch, [at(n) for n in _RATIOS])


def _decode_other(
    data: tf.Tensor, spec: ImageSpec, augment: Augment | None, u: tf.Tensor | None
) -> tf.Tensor:
    """PNG, BMP or GIF (its first frame), then its window."""
    image = tf.io.decode_image(data, channels=spec.channels, expand_animations=False)
    y, x, height, width = _window(tf.shape(image)[:2], spec, augment, u)
    return image[y : y + height, x : x + width]


def tf_decode_resize_data(
    data: tf.Tensor, spec: ImageSpec, augment: Augment | None = None, u: tf.Tensor | None = None
) -> tf.Tensor:
    """Encoded file bytes (JPEG, PNG, BMP or GIF) to uint8 HWC at spec's size; `u`: a training image's
    draws (tf_uniforms) for its flip and rrc crop, as decode.decode_bytes."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg(data, spec, augment, u),
        lambda: _decode_other(data, spec, augment, u),
    )
    if spec.resize == "pad" and not cuts_drawn_crop(augment, u):
        size = tf.shape(image)[:2]
        top = (tf.maximum(size[0], size[1] * spec.height // spec.width) - size[0]) // 2
        left = (tf.maximum(size[1], size[0] * spec.width // spec.height) - size[1]) // 2
        image = tf.image.pad_to_bounding_box(image, top, left, size[0] + 2 * top, size[1] + 2 * left)
    # Float in: TF's bilinear kernel is markedly slower on uint8 input, for the same values out.
    image = tf.image.resize(tf.cast(image, tf.float32), (spec.height, spec.width), antialias=False)
    # A bilinear mix of values in [0, 255] stays in range: round and cast, no clip needed.
    image = tf.cast(tf.round(image), tf.uint8)
    if u is not None and augment is not None and augment.at_decode:
        image = tf.cond(u[4] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.ensure_shape(image, spec.shape)


def tf_decode_resize(
    path: tf.Tensor, spec: ImageSpec, augment: Augment | None = None, u: tf.Tensor | None = None
) -> tf.Tensor:
    """One file's path to uint8 HWC at spec's size."""
    return tf_decode_resize_data(tf.io.read_file(path), spec, augment, u)
