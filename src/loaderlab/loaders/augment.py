"""Which pixels of a file become the model's input: the resize mode's window, or a training crop.

Every loader asks here, so a file gives the same window in each of them:
- `data.resize`: squash (the whole image), crop (the centre at the target's aspect) or pad (the whole
  image, letterboxed with zeros to the target's aspect), with the integer arithmetic of Keras'
  `image_dataset_from_directory` (`crop_to_aspect_ratio`, `pad_to_aspect_ratio`);
- `data.eval_crop`: that window shrunk about its centre, for every decode but rrc's training crops;
- `augment`: a horizontal flip (flip, rrc) and a random-resized crop (rrc), drawn at decode time for the
  training split only, from (seed, epoch, index in the split): the same boxes in every loader, in any
  order, thread or process. tf_decode holds the same arithmetic as TensorFlow ops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

AUGMENTS = ("none", "flip", "rrc", "layers")
RESIZES = ("squash", "crop", "pad")
DRAWS = 5  # uniforms per image: area, log aspect, x, y, flip
MASK32 = 0xFFFFFFFF
MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # Chris Wellons' lowbias32 integer hash


def _mul32(x: np.ndarray, c: int) -> np.ndarray:
    """x * c mod 2**32 for x < 2**32 in int64, in 16-bit halves so nothing overflows (as in TF)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & MASK32


def hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 of each value (int64 holding 32 bits): a well-mixed, counter-based draw."""
    x = x ^ (x >> 16)
    x = _mul32(x, MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, MULTIPLIERS[1])
    return x ^ (x >> 16)


def uniforms(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """(len(indices), DRAWS) floats in [0, 1), a function of (seed, epoch, index) alone."""
    base = hash32(hash32(np.int64(seed & MASK32)) ^ np.int64(epoch & MASK32))
    per_image = hash32(base ^ (np.asarray(indices, np.int64) & MASK32))
    draws = hash32(per_image[:, None] ^ np.arange(1, DRAWS + 1, dtype=np.int64) * 0x9E3779B1 & MASK32)
    return (draws >> 8).astype(np.float64) / 2**24  # 24 bits: exact in float32 and float64


@dataclass(frozen=True)
class Augment:
    """`augment`: what training draws at decode time (flip, rrc), or `layers` in the model, or none."""

    kind: str = "none"
    scale: tuple[float, float] = (0.08, 1.0)  # rrc: the crop's share of the image's area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # rrc: the crop's width / height
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTS:
            raise ValueError(f"augment must be one of {list(AUGMENTS)}. Received: augment={self.kind!r}")
        low, high = (float(v) for v in self.scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"augment.scale must be [low, high] with 0 < low <= high <= 1. Received: "
                             f"scale={list(self.scale)}")  # fmt: skip
        low, high = (float(v) for v in self.ratio)
        if not 0 < low <= high:
            raise ValueError(
                f"augment.ratio must be [low, high] with 0 < low <= high. Received: ratio={list(self.ratio)}"
            )

    @classmethod
    def from_config(cls, augment: Mapping | None, default_seed: int) -> Augment:
        """From the `augment` group (none, flip, rrc, layers); `default_seed` (trainer.seed) where the
        group sets no seed."""
        augment = augment or {}
        kind = augment.get("kind", "none")
        ranges = {k: tuple(float(v) for v in augment[k]) for k in ("scale", "ratio") if k in augment}
        seed = augment.get("seed")
        return cls(kind, seed=int(seed if seed is not None else default_seed), **ranges)

    @property
    def at_decode(self) -> bool:
        """Whether the loaders draw something per training image."""
        return self.kind in ("flip", "rrc")

    @property
    def crops(self) -> bool:
        return self.kind == "rrc"

    def draws(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """Each training image's uniforms in this epoch (see `window` for their use)."""
        return uniforms(self.seed, epoch, indices)


def resize_window(size: tuple[int, int], target: tuple[int, int], resize: str) -> tuple[int, int, int, int]:
    """(y, x, height, width) of the image that the resize mode keeps: all of it, or crop's centre."""
    height, width = size
    if resize != "crop":
        return 0, 0, height, width
    target_h, target_w = target
    crop_h = max(1, min(height, width * target_h // target_w))
    crop_w = max(1, min(width, height * target_w // target_h))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def centre_crop(window: tuple[int, int, int, int], fraction: float) -> tuple[int, int, int, int]:
    """The window's centre at `fraction` of each side (data.eval_crop)."""
    y, x, height, width = window
    new_h = max(1, math.floor(height * fraction + 0.5))
    new_w = max(1, math.floor(width * fraction + 0.5))
    return y + (height - new_h) // 2, x + (width - new_w) // 2, new_h, new_w


def random_window(size: tuple[int, int], u: np.ndarray, augment: Augment) -> tuple[int, int, int, int]:
    """rrc's crop from the image's uniforms: area and aspect drawn (log-uniform aspect, as torchvision),
    each side clipped to the image (so a crop never falls back to a fixed centre), then its place."""
    height, width = size
    low, high = augment.scale
    area = height * width * (low + float(u[0]) * (high - low))
    log_low, log_high = math.log(augment.ratio[0]), math.log(augment.ratio[1])
    aspect = math.exp(log_low + float(u[1]) * (log_high - log_low))
    crop_w = min(width, max(1, math.floor(math.sqrt(area * aspect) + 0.5)))
    crop_h = min(height, max(1, math.floor(math.sqrt(area / aspect) + 0.5)))
    y = math.floor(float(u[3]) * (height - crop_h + 1))
    x = math.floor(float(u[2]) * (width - crop_w + 1))
    return y, x, crop_h, crop_w


def window(
    size: tuple[int, int], spec, augment: Augment | None = None, u: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """The window of an image of `size` that becomes the input: rrc's crop where drawn, else the resize
    mode's window, shrunk to spec.eval_crop where set."""
    if cuts_drawn_crop(augment, u):
        return random_window(size, u, augment)
    box = resize_window(size, (spec.height, spec.width), spec.resize)
    return box if spec.eval_crop is None else centre_crop(box, spec.eval_crop)


def scaled_window(box: tuple[int, int, int, int], n: int, decoded: tuple[int, int]) -> tuple[int, ...]:
    """The window in an image decoded at 1/n (libjpeg: a side of s pixels becomes ceil(s / n)):
    (y, x, height, width), widened to whole decoded pixels and kept inside them."""
    y, x, height, width = box
    top, left = y // n, x // n
    bottom = min(decoded[0], -(-(y + height) // n))
    right = min(decoded[1], -(-(x + width) // n))
    return top, left, bottom - top, right - left


def padded_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """data.resize=pad: (padded height, padded width, top, left) that give the image the target's aspect,
    the same band on both sides (as Keras: an odd difference leaves one row or column short)."""
    (height, width), (target_h, target_w) = size, target
    top = (max(height, width * target_h // target_w) - height) // 2
    left = (max(width, height * target_w // target_h) - width) // 2
    return height + 2 * top, width + 2 * left, top, left


def cuts_drawn_crop(augment: Augment | None, u: np.ndarray | None) -> bool:
    """Whether this decode cuts rrc's drawn crop (its window replaces the resize mode's, pad included)."""
    return u is not None and augment is not None and augment.crops


def flips(u: np.ndarray | None) -> bool:
    """Whether this image is flipped left to right (flip and rrc: half of them)."""
    return u is not None and float(u[4]) < 0.5
