"""The one preprocessing spec every loader shares: decode, to RGB or grey, bilinear resize, uint8 HWC."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

# EXIF orientation is ignored, as tf.io.decode_jpeg and keras' image_dataset_from_directory do.
_FLAGS = {
    3: cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    1: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
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
    """The shape every loader outputs: (height, width, channels), uint8."""

    height: int
    width: int
    channels: int = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels

    @classmethod
    def from_config(cls, input_size: int | list[int], channels: int) -> ImageSpec:
        """Build from `model.input_size` (int or [height, width]) and `data.channels`."""
        if isinstance(input_size, int):
            height = width = input_size
        else:
            height, width = (int(v) for v in input_size)
        if channels not in _FLAGS:
            raise ValueError(f"data.channels must be 1 or 3, got {channels}.")
        return cls(height, width, channels)


def decode_resize(path: str, spec: ImageSpec) -> np.ndarray:
    """Decode one file to uint8 HWC at spec's size, or raise BadImageError."""
    try:
        buffer = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with any file name
    except FileNotFoundError:
        raise BadImageError(path, "file does not exist") from None
    except OSError as e:
        raise BadImageError(path, f"cannot be read ({e.strerror})") from None
    if buffer.size == 0:
        raise BadImageError(path, "file is empty (0 bytes)")
    image = cv2.imdecode(buffer, _FLAGS[spec.channels])
    if image is None:
        raise BadImageError(path, "not a decodable image (truncated, corrupt or another format)")
    if spec.channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
    return image.reshape(spec.shape)


@dataclass
class ImageDecoder:
    """decode_resize plus the `data.on_bad_image` policy; counts what it skipped."""

    spec: ImageSpec
    on_bad_image: str = "error"
    skipped: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {self.on_bad_image!r}.")

    def __getstate__(self) -> dict:  # picklable for PyDataset worker processes
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def decode(self, path: str) -> np.ndarray | None:
        """One image, or None when it is bad and the policy is skip."""
        try:
            return decode_resize(path, self.spec)
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise
            with self._lock:
                self.skipped.append(f"{e.path}\t{e.reason}")
            return None

    def batch(self, paths, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode a batch; skipped images are left out of both arrays."""
        images = np.empty((len(paths), *self.spec.shape), dtype=np.uint8)
        keep = np.ones(len(paths), dtype=bool)
        for i, path in enumerate(paths):
            if isinstance(path, bytes):
                path = path.decode()
            image = self.decode(path)
            if image is None:
                keep[i] = False
            else:
                images[i] = image
        if keep.all():
            return images, np.asarray(labels, dtype=np.int32)
        return images[keep], np.asarray(labels, dtype=np.int32)[keep]
