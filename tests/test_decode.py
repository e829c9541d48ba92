"""Decoding at the size the model needs: the JPEG header, the scale chosen, the pixels, and fidelity."""

from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import photo_like
from loaderlab.loaders.decode import ImageSpec, decode_resize, jpeg_scale
from loaderlab.loaders.headers import jpeg_size

REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
REDUCED_GREY = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def encode(image: np.ndarray, progressive: bool = False, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, data = cv2.imencode(".jpg", image, params)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (37, 4000), (333, 500), (1200, 1600)])
def test_the_header_gives_height_and_width(size: tuple[int, int], progressive: bool) -> None:
    data = encode(np.zeros((*size, 3), np.uint8), progressive)
    assert (b"\xff\xc2" if progressive else b"\xff\xc0") in data  # SOF2 / SOF0: the frame kind under test
    assert jpeg_size(data) == size
    assert jpeg_size(np.frombuffer(data, np.uint8)) == size  # as decode_resize reads it


def test_the_header_is_found_after_exif_and_in_extended_frames() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation, ignored by the decode
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, "JPEG", exif=exif.tobytes())
    data = buffer.getvalue()
    assert data.index(b"\xff\xe1") < data.index(b"\xff\xc0")  # APP1 (EXIF) comes before the frame
    assert jpeg_size(data) == (200, 300)
    extended = data.replace(b"\xff\xc0", b"\xff\xc1", 1)  # SOF1: extended sequential, same layout
    assert jpeg_size(extended) == (200, 300)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    assert cv2.imdecode(np.frombuffer(extended, np.uint8), flags).shape == (200, 300, 3)


def test_anything_else_has_no_jpeg_size() -> None:
    jpeg = encode(np.zeros((20, 30, 3), np.uint8))
    ok, png = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))
    for data in (png.tobytes(), b"", b"\xff\xd8", jpeg[: jpeg.index(b"\xff\xc0") + 4], b"not an image"):
        assert jpeg_size(data) is None


@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [
        ((1792, 1792), (224, 224), 8),
        ((1785, 1785), (224, 224), 8),  # libjpeg rounds up: ceil(1785 / 8) = 224
        ((1784, 1784), (224, 224), 4),  # ceil(1784 / 8) = 223
        ((1200, 1600), (224, 224), 4),
        ((700, 900), (224, 224), 2),
        ((447, 1000), (224, 224), 2),  # ceil(447 / 2) = 224
        ((446, 1000), (224, 224), 1),
        ((256, 256), (224, 224), 1),
        ((2000, 300), (224, 224), 1),  # the height alone would allow 1/8: both sides must cover
        ((1200, 1600), (224, 400), 4),  # not square
        ((1200, 1600), (224, 401), 2),
        ((100, 100), (224, 224), 1),  # smaller than the target: full size, then enlarged
    ],
)
def test_the_smallest_scale_that_covers_the_target(size, target, scale: int) -> None:
    def covers(n: int) -> bool:  # libjpeg's output at 1/n is ceil(side / n) on each side
        return all(math.ceil(side / n) >= wanted for side, wanted in zip(size, target, strict=True))

    assert jpeg_scale(size, target) == scale
    assert scale == 1 or covers(scale)
    assert scale == 8 or not covers(2 * scale)  # the next reduction would fall short


# (height, width) on disk -> the scale a (36, 28) target takes: every reduction, and full size.
SIZES = {(288, 230): 8, (144, 112): 4, (72, 56): 2, (71, 60): 2, (70, 56): 1}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, tuple[tuple[int, int], int]]:
    """path -> ((height, width), scale) for textured JPEGs, baseline and progressive."""
    folder = tmp_path_factory.mktemp("jpegs")
    files = {}
    for i, (size, scale) in enumerate(SIZES.items()):
        for progressive in (False, True):
            path = folder / f"{size[0]}x{size[1]}{'p' if progressive else ''}.jpg"
            path.write_bytes(encode(photo_like(*size, seed=i), progressive))
            files[str(path)] = (size, scale)
    return files


@pytest.mark.parametrize("channels", [3, 1])
def test_a_jpeg_decodes_at_that_scale_then_resizes_bilinearly(jpegs, channels: int) -> None:
    spec = ImageSpec(36, 28, channels)
    for path, ((height, width), scale) in jpegs.items():
        assert jpeg_scale((height, width), (36, 28)) == scale
        buffer = np.fromfile(path, np.uint8)
        if channels == 3:
            flags = REDUCED.get(scale, cv2.IMREAD_COLOR)
            reduced = cv2.imdecode(buffer, flags | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]  # BGR -> RGB
        else:
            reduced = cv2.imdecode(buffer, REDUCED_GREY.get(scale, cv2.IMREAD_GRAYSCALE))
        assert reduced.shape[:2] == (math.ceil(height / scale), math.ceil(width / scale))
        expected = cv2.resize(reduced, (28, 36), interpolation=cv2.INTER_LINEAR).reshape(spec.shape)
        assert np.array_equal(decode_resize(path, spec), expected), path


def test_scaled_decode_false_gives_the_full_size_decode(jpegs) -> None:
    full, scaled = ImageSpec(36, 28, 3, scaled_decode=False), ImageSpec(36, 28, 3)
    for path, (_, scale) in jpegs.items():
        decoded = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]  # RGB
        expected = cv2.resize(decoded, (28, 36), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(decode_resize(path, full), expected), path
        assert np.array_equal(decode_resize(path, scaled), expected) == (scale == 1), path


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_png_and_bmp_decode_at_full_size_as_before(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"big{ext}"
    assert cv2.imwrite(str(path), photo_like(288, 230))  # a JPEG of this size would decode at 1/8
    expected = cv2.resize(cv2.imread(str(path))[..., ::-1], (28, 36), interpolation=cv2.INTER_LINEAR)
    for scaled in (True, False):
        assert np.array_equal(decode_resize(str(path), ImageSpec(36, 28, 3, scaled)), expected)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("scaled", [True, False])
def test_tensorflow_ops_take_the_same_scale(jpegs, tmp_path: Path, channels: int, scaled: bool) -> None:
    """tf.io.decode_jpeg(ratio) is the same libjpeg-turbo scaled IDCT: only the resize's rounding differs.

    OpenCV's bilinear resize works in 11-bit fixed point, TensorFlow's in float: at most one grey
    level apart. A different scale would differ by far more on these textures.
    """
    import tensorflow as tf

    from loaderlab.loaders.tf_decode import tf_decode_resize

    boundary = tmp_path / "boundary"  # 1785 px: 1/8 only because libjpeg rounds the size up
    boundary.mkdir()
    files = dict(jpegs)
    for size in ((1785, 600), (1784, 600)):
        path = boundary / f"{size[0]}.jpg"
        path.write_bytes(encode(photo_like(*size, seed=9)))
        files[str(path)] = (size, jpeg_scale(size, (224, 70)))
    for path, (size, _) in files.items():
        height, width = (224, 70) if "boundary" in path else (36, 28)
        spec = ImageSpec(height, width, channels, scaled)
        ours = decode_resize(path, spec).astype(int)
        theirs = tf.function(lambda p, spec=spec: tf_decode_resize(p, spec))(tf.constant(path)).numpy()
        assert theirs.shape == spec.shape and theirs.dtype == np.uint8
        assert np.abs(ours - theirs).max() <= 1, (path, size)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("size", [(1200, 1600), (700, 900), (333, 500)])
def test_scaled_decode_is_at_least_as_faithful_as_full_decode_and_bilinear(
    tmp_path: Path, size: tuple[int, int], record_property
) -> None:
    """Against a low-pass reference (full decode, then INTER_AREA), on photo-like content.

    Bilinear from a picture 5x larger reads only 2x2 source pixels per output pixel, so it aliases
    fine texture; a DCT-domain reduction averages first. Where the scale is 1 both paths are one.
    """
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(photo_like(*size, seed=size[0])))
    full = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]  # RGB
    reference = cv2.resize(full, (224, 224), interpolation=cv2.INTER_AREA)
    scaled = decode_resize(str(path), ImageSpec(224, 224, 3))
    bilinear = decode_resize(str(path), ImageSpec(224, 224, 3, scaled_decode=False))
    ours, before = psnr(scaled, reference), psnr(bilinear, reference)
    scale = jpeg_scale(size, (224, 224))
    print(f"\n{size[1]}x{size[0]} -> 224 (1/{scale}): PSNR {ours:.1f} dB, full + bilinear {before:.1f} dB")
    record_property(f"psnr_scaled_{size[1]}x{size[0]}", round(ours, 2))
    record_property(f"psnr_full_bilinear_{size[1]}x{size[0]}", round(before, 2))
    assert ours >= before
    # No pixel shift and no channel swap: each would be clearly further from the reference.
    for wrong in (np.roll(scaled, 1, axis=0), np.roll(scaled, 1, axis=1), scaled[..., ::-1]):
        assert psnr(wrong, reference) < ours - 1.0
