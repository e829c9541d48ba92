"""A learnable synthetic dataset: class-specific shapes on noisy backgrounds, stored as JPEGs.

The draw of image i depends only on (seed, i), so generation is deterministic, parallel and
resumable: each file is written atomically, and a marker written last says the set is complete.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np

from loaderlab.data.folder import folder_manifest
from loaderlab.data.manifest import DatasetError, Manifest
from loaderlab.utils.progress import counted
from loaderlab.utils.system import usable_cores

SHAPES = ("disk", "square", "triangle", "plus", "ring", "star", "bar", "crescent")
COMPLETE_MARKER = ".complete.json"
_SHIFT = 4  # sub-pixel precision bits for cv2.fillPoly


def _polygon(center: np.ndarray, radius: float, angle: float, n: int, inner: float = 1.0) -> np.ndarray:
    """Vertices of a regular n-gon, or a star when inner < 1, as fixed-point int32."""
    k = np.arange(n * (2 if inner < 1 else 1))
    step = np.pi / n if inner < 1 else 2 * np.pi / n
    r = np.where(k % 2 == 1, radius * inner, radius) if inner < 1 else np.full(len(k), radius)
    theta = angle + k * step
    pts = center + np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return np.round(pts * (1 << _SHIFT)).astype(np.int32)


def _rect(center: np.ndarray, half_w: float, half_h: float, angle: float) -> np.ndarray:
    """A rotated rectangle as a fixed-point polygon."""
    box = cv2.boxPoints(((float(center[0]), float(center[1])), (2 * half_w, 2 * half_h), np.degrees(angle)))
    return np.round(box * (1 << _SHIFT)).astype(np.int32)


def shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 mask of one shape at a random position, size and rotation."""
    radius = rng.uniform(0.18, 0.36) * size
    center = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((size, size), np.uint8)
    c = tuple(int(v * (1 << _SHIFT)) for v in center)
    r = int(radius * (1 << _SHIFT))
    if shape == "disk":
        cv2.circle(mask, c, r, 255, -1, cv2.LINE_AA, _SHIFT)
    elif shape == "ring":
        cv2.circle(mask, c, int(r * 0.8), 255, max(2, int(radius * 0.35)), cv2.LINE_AA, _SHIFT)
    elif shape == "crescent":
        cv2.circle(mask, c, r, 255, -1, cv2.LINE_AA, _SHIFT)
        offset = center + 0.5 * radius * np.array([np.cos(angle), np.sin(angle)])
        cv2.circle(mask, tuple(int(v * (1 << _SHIFT)) for v in offset), r, 0, -1, cv2.LINE_AA, _SHIFT)
    elif shape == "square":
        cv2.fillPoly(mask, [_polygon(center, radius, angle, 4)], 255, cv2.LINE_AA, _SHIFT)
    elif shape == "triangle":
        cv2.fillPoly(mask, [_polygon(center, radius, angle, 3)], 255, cv2.LINE_AA, _SHIFT)
    elif shape == "star":
        cv2.fillPoly(mask, [_polygon(center, radius, angle, 5, inner=0.4)], 255, cv2.LINE_AA, _SHIFT)
    elif shape == "plus":
        for a in (angle, angle + np.pi / 2):
            cv2.fillPoly(mask, [_rect(center, radius, radius * 0.22, a)], 255, cv2.LINE_AA, _SHIFT)
    elif shape == "bar":
        cv2.fillPoly(mask, [_rect(center, radius, radius * 0.3, angle)], 255, cv2.LINE_AA, _SHIFT)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def draw_image(index: int, num_classes: int, size: int, seed: int) -> tuple[np.ndarray, int]:
    """Draw image `index` (BGR uint8) and return it with its label."""
    label = index % num_classes
    rng = np.random.default_rng([seed, index])
    background = rng.uniform(0, 255, size=3)
    foreground = (background + 128 + rng.uniform(-60, 60, size=3)) % 256
    gradient = np.linspace(-30, 30, size)[None, :, None] * rng.uniform(-1, 1)
    alpha = shape_mask(SHAPES[label], size, rng)[..., None].astype(np.float32) / 255.0
    image = (1 - alpha) * (background + gradient) + alpha * foreground
    image += rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _image_path(root: Path, index: int, num_classes: int) -> Path:
    return root / SHAPES[index % num_classes] / f"{index:07d}.jpg"


def _write_one(args: tuple[str, int, int, int, int]) -> int:
    """Draw and atomically write one image (worker process entry point)."""
    root, index, num_classes, size, seed = args
    path = _image_path(Path(root), index, num_classes)
    if not path.exists():
        image, _ = draw_image(index, num_classes, size, seed)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(encoded.tobytes())
        os.replace(tmp, path)
    return index


def _init_worker() -> None:
    cv2.setNumThreads(1)


def generate(
    root: str | Path,
    num_images: int,
    image_size: int,
    num_classes: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the dataset under root unless it is already complete; finish a partial one."""
    root = Path(root)
    params = {"num_images": num_images, "image_size": image_size, "num_classes": num_classes, "seed": seed}
    marker = root / COMPLETE_MARKER
    if marker.exists():
        if json.loads(marker.read_text()) != params:
            raise DatasetError(
                f"'{root}' holds a synthetic dataset made with other parameters: delete the folder to "
                f"generate it again. Received: {params}"
            )
        return root
    if not 2 <= num_classes <= len(SHAPES):
        raise DatasetError(
            f"data.num_classes must be between 2 and {len(SHAPES)}. Received: num_classes={num_classes}"
        )
    if image_size < 8:
        raise DatasetError(f"data.image_size must be at least 8 px. Received: image_size={image_size}")
    if num_images < 2 * num_classes:
        raise DatasetError(
            f"data.num_images must be at least twice data.num_classes ({2 * num_classes}), so that each "
            f"class has an image in both splits. Received: num_images={num_images}"
        )
    for name in SHAPES[:num_classes]:
        (root / name).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), i, num_classes, image_size, seed) for i in range(num_images)]
    workers = workers or usable_cores()
    title = f"Generating {num_images} synthetic images ({image_size}px) in {root}"
    # spawn, not fork: the parent may already run TensorFlow threads.
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        written = pool.imap_unordered(_write_one, tasks, chunksize=64)
        for _ in counted(written, num_images, "image", title, progress):
            pass
    marker.write_text(json.dumps(params))
    return root


def synthetic_manifest(
    root: str,
    num_images: int,
    image_size: int,
    num_classes: int,
    seed: int,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    progress: bool = True,
    test_fraction: float = 0.0,
) -> Manifest:
    """Generate (if needed) and read the synthetic dataset."""
    generate(root, num_images, image_size, num_classes, seed, progress=progress)
    return folder_manifest(
        root, val_fraction=val_fraction, split_seed=split_seed, test_fraction=test_fraction
    )
