"""The one preprocessing spec every loader shares: decode, to RGB or grey, bilinear resize, uint8 HWC."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import sys
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from loaderlab.data.storage import Storage, StoreError, explain, is_url
from loaderlab.loaders.augment import (
    RESIZES,
    Augment,
    cuts_drawn_crop,
    flips,
    padded_size,
    scaled_window,
    window,
)
from loaderlab.loaders.headers import TAIL_BYTES, image_verdict, jpeg_size

# EXIF orientation is ignored, as tf.io.decode_jpeg and keras' image_dataset_from_directory do.
# Colour decodes straight to RGB where OpenCV can (>= 4.10): the same pixels as BGR then cvtColor
# (libjpeg-turbo only orders the channels differently), without a second full-size pass and buffer.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_FLAGS = {
    3: (cv2.IMREAD_COLOR if _RGB is None else _RGB) | cv2.IMREAD_IGNORE_ORIENTATION,
    1: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
}
JPEG_SCALES = (8, 4, 2)  # libjpeg's DCT-domain reductions, the largest first (1 = full size)
# REDUCED_COLOR_n is REDUCED_GRAYSCALE_n | IMREAD_COLOR; OpenCV 5 refuses IMREAD_COLOR together with
# IMREAD_COLOR_RGB, so a reduced RGB decode is the GRAYSCALE_n scale bit plus the RGB flag.
_REDUCED = {
    channels: {n: getattr(cv2, f"IMREAD_REDUCED_GRAYSCALE_{n}") | _FLAGS[channels] for n in JPEG_SCALES}
    for channels in _FLAGS
}
ON_BAD_IMAGE = ("error", "skip")


class BadImageError(RuntimeError):
    """An image file is missing or cannot be decoded; the message names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"Bad image '{path}': {reason}. Remove or replace the file, or set "
            "data.on_bad_image=skip to leave such files out."
        )
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ImageSpec:
    """What every loader outputs, (height, width, channels) uint8, and how JPEGs are decoded to it."""

    height: int
    width: int
    channels: int = 3
    scaled_decode: bool = True  # JPEGs decode at the smallest libjpeg scale that covers (height, width)
    resize: str = "squash"  # squash | crop | pad: how an image of another aspect fits (loaders/augment.py)
    eval_crop: float | None = None  # the window's centre at this share of each side, except rrc's crops

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels

    @property
    def facts(self) -> dict:
        """The fields as JSON keeps them: the run's model facts, with which eval.py and serving decode."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(
        cls,
        input_size: int | list[int],
        channels: int,
        scaled_decode: bool = True,
        resize: str = "squash",
        eval_crop: float | None = None,
    ) -> ImageSpec:
        """Build from `model.input_size` (int or [height, width]) and data's channels, scaled_decode,
        resize and eval_crop."""
        if isinstance(input_size, int):
            height = width = input_size
        else:
            height, width = (int(v) for v in input_size)
        if channels not in _FLAGS:
            raise ValueError(f"data.channels must be 1 or 3. Received: channels={channels!r}")
        if not isinstance(scaled_decode, bool):
            raise ValueError(
                f"data.scaled_decode must be true or false. Received: scaled_decode={scaled_decode!r}"
            )
        if resize not in RESIZES:
            raise ValueError(f"data.resize must be one of {list(RESIZES)}. Received: resize={resize!r}")
        if eval_crop is not None and not 0 < eval_crop <= 1:
            raise ValueError(
                f"data.eval_crop must be null or in (0, 1], e.g. 0.875. Received: eval_crop={eval_crop!r}"
            )
        return cls(
            height, width, channels, scaled_decode, resize, None if eval_crop is None else float(eval_crop)
        )


def jpeg_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest libjpeg reduction n (8, 4, 2, else 1) whose output still covers target on both sides.

    libjpeg decodes a side of s pixels at 1/n scale to ceil(s / n) pixels.
    """
    (height, width), (target_h, target_w) = size, target
    for n in JPEG_SCALES:
        if -(-height // n) >= target_h and -(-width // n) >= target_w:
            return n
    return 1


def remote_bytes(url: str, fetched: bytes | Exception) -> bytes:
    """An object's bytes as Storage.read_many gave them, or a BadImageError naming it.

    A store that answers per-object (missing, truncated) makes a bad image, to which
    data.on_bad_image applies; a store that refuses everything (credentials, bucket) a StoreError.
    """
    if isinstance(fetched, FileNotFoundError):
        raise BadImageError(url, "object does not exist (deleted, or a wrong prefix)")
    if isinstance(fetched, Exception):
        raise StoreError(explain(url, fetched))
    verdict = image_verdict(fetched[:16], fetched[-TAIL_BYTES:], len(fetched))
    if verdict:
        raise BadImageError(url, verdict)
    return fetched


def read_file(path: str) -> bytes:
    """A file's bytes, or a BadImageError naming it."""
    try:
        with open(path, "rb", buffering=0) as f:  # any file name, at half np.fromfile's overhead
            data = f.read()
    except FileNotFoundError:
        raise BadImageError(path, "file does not exist") from None
    except OSError as e:
        raise BadImageError(path, f"cannot be read ({e.strerror})") from None
    if not data:
        raise BadImageError(path, "file is empty (0 bytes)")
    return data


def decode_resize(
    path: str,
    spec: ImageSpec,
    out: np.ndarray | None = None,
    augment: Augment | None = None,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """Decode one file (a JPEG at a reduced scale, see ImageSpec) to uint8 HWC at spec's size, or raise.

    With `out` (a C-contiguous uint8 array of spec.shape, e.g. one slot of a batch), the result is
    written there and no output buffer is allocated. `augment`, `u`: see decode_bytes.
    """
    return decode_bytes(read_file(path), spec, out, path, augment, u)


def decode_bytes(
    data: bytes,
    spec: ImageSpec,
    out: np.ndarray | None = None,
    name: str = "<bytes>",
    augment: Augment | None = None,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """decode_resize for an encoded image already in memory (a packed record, say); `name` is for errors.

    `u`: a training image's uniforms (augment.draws), for its flip and rrc crop; None for the resize
    mode's window. A JPEG decodes at the smallest libjpeg scale that still covers its window's output.
    """
    buffer = np.frombuffer(data, np.uint8)
    size = jpeg_size(data)  # the header alone: the window and scale are known before decoding
    n = 1
    if size is not None:
        box = window(size, spec, augment, u)
        if spec.scaled_decode:
            n = jpeg_scale(box[2:], (spec.height, spec.width))
        image = cv2.imdecode(buffer, _REDUCED[spec.channels][n] if n > 1 else _FLAGS[spec.channels])
    else:  # PNG, BMP, GIF (its first frame): the size is known once decoded
        image = cv2.imdecode(buffer, _FLAGS[spec.channels])
        box = None if image is None else window(image.shape[:2], spec, augment, u)
    if image is None:
        raise BadImageError(name, "not a decodable image (truncated, corrupt or another format)")
    if spec.channels == 3 and _RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # old OpenCV decodes to BGR
    y, x, height, width = scaled_window(box, n, image.shape[:2])
    if (height, width) != image.shape[:2]:
        image = image[y : y + height, x : x + width]  # a view: the resize below reads only the window
    if spec.resize == "pad" and not cuts_drawn_crop(augment, u):
        pad_h, pad_w, top, left = padded_size(image.shape[:2], (spec.height, spec.width))
        image = cv2.copyMakeBorder(
            image, top, pad_h - height - top, left, pad_w - width - left, cv2.BORDER_CONSTANT, value=0
        )
    if out is None and image.shape[:2] == (spec.height, spec.width) and image.flags.c_contiguous:
        target = image  # decoded at the size wanted: no copy
    else:
        target = (aligned_empty(spec.shape) if out is None else out).reshape(
            (spec.height, spec.width) if image.ndim == 2 else spec.shape
        )
        if image.shape[:2] != (spec.height, spec.width):
            resized = cv2.resize(image, (spec.width, spec.height), dst=target, interpolation=cv2.INTER_LINEAR)
            if resized.ctypes.data != target.ctypes.data:  # OpenCV reallocated: never lose the pixels
                np.copyto(target, resized.reshape(target.shape))
        else:
            np.copyto(target, image.reshape(target.shape))
    if flips(u):
        cv2.flip(target, 1, dst=target)
    return target.reshape(spec.shape)


@functools.cache  # once per process, from whichever decoder is made first
def _recycle_freed_memory(pad_bytes: int = 16 * 2**20, mmap_threshold: int = 32 * 2**20) -> None:
    """On glibc, let malloc reuse freed decode buffers instead of handing them back to the OS at once.

    Worker threads' arenas are trimmed after each large free, and large blocks are mapped and
    unmapped each time, so every image decoded off the main thread was page-faulted anew (the cost
    is in docs/benchmarks.md). The values are what MALLOC_TOP_PAD_, MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ would set (32 MB is glibc's own ceiling; twice it, the trim threshold
    glibc pairs with a raised mmap threshold, keeps a freed batch for the next one).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
            libc.mallopt(_M_TOP_PAD, pad_bytes)
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)
    except OSError:  # not glibc (musl, ...): nothing to tune
        pass


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # from glibc's malloc.h


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised uint8 array whose data starts on an `align`-byte boundary.

    TensorFlow adopts a 64-byte-aligned NumPy buffer returned by numpy_function (and by the
    generators Keras wraps) as it is, and copies any other (docs/benchmarks.md).
    """
    size = int(np.prod(shape))
    raw = np.empty(size + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + size].reshape(shape)


@dataclass
class ImageDecoder:
    """decode_resize plus the `data.on_bad_image` policy; keeps (path, reason) of each file it skipped."""

    spec: ImageSpec
    on_bad_image: str = "error"
    storage: Storage = field(default_factory=Storage)  # how URLs (s3://...) are read; local paths skip it
    augment: Augment = field(default_factory=Augment)  # drawn for training batches (batch's `indices`)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {self.on_bad_image!r}.")
        _recycle_freed_memory()

    def __getstate__(self) -> dict:  # picklable for PyDataset worker processes
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())
        _recycle_freed_memory()  # a spawned worker process starts with glibc's defaults

    def decode(
        self,
        path: str,
        out: np.ndarray | None = None,
        fetched: bytes | Exception | None = None,
        u: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """One image (written into `out` when given), or None when it is bad and the policy is skip.

        `fetched`: a URL's bytes (or error) already read with the rest of its batch; `u`: a training
        image's draws (self.augment.draws).
        """
        try:
            if is_url(path):
                data = self.storage.read_many([path])[0] if fetched is None else fetched
                return decode_bytes(remote_bytes(path, data), self.spec, out, path, self.augment, u)
            return decode_resize(path, self.spec, out, self.augment, u)
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise
            self.note_skipped(e.path, e.reason)
            return None

    def note_skipped(self, path: str, reason: str) -> None:
        """Count a file left out under on_bad_image=skip: each file once, however often it is met."""
        with self._lock:
            if all(path != p for p, _ in self.skipped):
                self.skipped.append((path, reason))

    def batch(
        self,
        paths,
        labels: np.ndarray,
        out: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        epoch: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode a batch in place into one array (`out`, at least len(paths) images, when given).

        `indices` (the images' places in their split) marks a training batch of `epoch`: the decoder's
        augment is drawn for each. Skipped images are left out of both arrays.
        """
        draws = [None] * len(paths)
        if indices is not None and self.augment.at_decode:
            draws = self.augment.draws(int(epoch), np.asarray(indices))
        images = aligned_empty((len(paths), *self.spec.shape)) if out is None else out[: len(paths)]
        keep = np.ones(len(paths), dtype=bool)
        paths = [p.decode() if isinstance(p, bytes) else p for p in paths]
        # A batch of URLs is fetched at once, storage.concurrency requests in flight: one GET at a
        # time would leave the cores waiting out every request's latency.
        fetched = self.storage.read_many(paths) if paths and is_url(paths[0]) else [None] * len(paths)
        for i, path in enumerate(paths):
            keep[i] = self.decode(path, out=images[i], fetched=fetched[i], u=draws[i]) is not None
        if keep.all():
            return images, np.asarray(labels, dtype=np.int32)
        return images[keep], np.asarray(labels, dtype=np.int32)[keep]
