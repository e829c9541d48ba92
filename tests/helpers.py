"""Small builders of image files for tests, and the ports and health checks of the servers they start."""

from __future__ import annotations

import itertools
import socket
import time
import urllib.request
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


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A BGR picture with what photos have: smooth shading, edges, fine texture and sensor noise."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(30, 225, (4, 5, 3)).astype(np.float32)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)  # smooth gradients
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image += (18 * np.sin(x / 2.3 + y / 3.1) * np.cos(y / 5.7))[..., None]  # texture finer than 224 px
    for _ in range(5):  # hard edges
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(height // 10, height // 3))
        cv2.circle(image, center, radius, rng.uniform(0, 255, 3).tolist(), -1, cv2.LINE_AA)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_mixed_dataset(root: Path) -> Path:
    """root/<class>/ textured images of sizes that a (36, 28) input decodes at 1/8, 1/4, 1/2 and full
    scale: baseline and progressive JPEGs, a greyscale JPEG and a PNG."""
    sizes = [(288, 230), (144, 112), (72, 56), (70, 56)]
    for c, name in enumerate(("a", "b")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            image = photo_like(*size, seed=10 * c + i)
            for progressive in (0, 1):
                params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive]
                assert cv2.imwrite(str(folder / f"{i}-{progressive}.jpg"), image, params)
        big = photo_like(288, 230, seed=c)
        assert cv2.imwrite(str(folder / "grey.jpg"), cv2.cvtColor(big, cv2.COLOR_BGR2GRAY))
        assert cv2.imwrite(str(folder / "big.png"), big)
    return root


def free_ports(n: int) -> list[int]:
    """n TCP ports nobody listens on at 127.0.0.1, all distinct."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for_health(uri: str, timeout_s: float = 60, path: str = "/health", process=None) -> None:
    """Return once `uri` + path answers; re-raise the last error after timeout_s, and fail at once
    if `process` (the server's, when given) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri}{path}", timeout=5):
                return
        except OSError:
            assert process is None or process.poll() is None, f"the server exited ({process.args[:6]})"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


LOADER_NAMES = ["inmemory", "generator", "sequence", "tfdata", "packed"]


def make_named_loader(name: str, pack_root: Path | str, **kwargs):
    """One of LOADER_NAMES with the tests' settings; a packed loader writes its packs under pack_root."""
    if name == "packed":
        from loaderlab.loaders.packed import PackedLoader

        return PackedLoader(root=str(pack_root), progress=False, **kwargs)
    if name == "inmemory":
        from loaderlab.loaders.inmemory import InMemoryLoader

        return InMemoryLoader(**kwargs)
    if name == "generator":
        from loaderlab.loaders.generator import GeneratorLoader

        return GeneratorLoader()
    if name == "sequence":
        from loaderlab.loaders.sequence import SequenceLoader

        return SequenceLoader(workers=2, **kwargs)
    from loaderlab.loaders.tfdata import TFDataLoader

    return TFDataLoader(**kwargs)


def one_pass(feed):
    """Yield (images, labels) batches of one pass over a loader's Feed, whatever its kind."""
    if feed.y is not None:
        for i in range(0, len(feed.y), feed.batch_size):
            yield feed.x[i : i + feed.batch_size], feed.y[i : i + feed.batch_size]
    elif feed.steps is not None:
        yield from itertools.islice(feed.x, feed.steps)
    elif hasattr(feed.x, "__getitem__"):
        for i in range(len(feed.x)):
            yield feed.x[i]
    else:
        for images, labels in feed.x:  # tensors (tf.data) or arrays (Grain)
            yield np.asarray(images), np.asarray(labels)


def collect(feed) -> tuple[np.ndarray, np.ndarray]:
    """One pass over a Feed, its batches joined: (images, labels)."""
    batches = list(one_pass(feed))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and mtime: a folder only read keeps it."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }
