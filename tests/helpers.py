"""Small builders of image files for tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_image(
    path: Path, size: tuple[int, int] = (24, 32), color_rgb=(200, 30, 60), ext: str = ".jpg"
) -> Path:
    """Write a solid-colour image of (height, width); returns its path."""
    path = Path(path).with_suffix(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.empty((*size, 3), np.uint8)
    image[:] = color_rgb[::-1]  # OpenCV writes BGR
    assert cv2.imwrite(str(path), image)
    return path


def make_folder_dataset(root: Path, counts: dict[str, int], ext: str = ".jpg") -> Path:
    """root/<class>/<i>.jpg with the given number of images per class."""
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{i:03d}", ext=ext)
    return root
