"""What a benchmark measures: the user's folder or bucket, read as it is, or the synthetic set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loaderlab.benchmark.runner import BenchmarkConfig

SIZE_SAMPLE = 200  # files whose pixel size the header reports


@dataclass
class Dataset:
    """What is measured: the folder, its image count and pixel sizes (height, width) of a sample."""

    root: Path | str  # a folder, or a URL (s3://...)
    num_images: int
    sizes: list[tuple[int, int]] = field(default_factory=list)
    synthetic: bool = True

    def describe(self) -> dict[str, str | int]:
        """Params: count, and the median and range of the sampled sizes, as HxW."""
        if not self.sizes:
            return {"num_images": self.num_images}
        by_area = sorted(self.sizes, key=lambda s: s[0] * s[1])
        mid = (int(median(h for h, _ in self.sizes)), int(median(w for _, w in self.sizes)))
        return {
            "num_images": self.num_images,
            "image_size_median": f"{mid[0]}x{mid[1]}",
            "image_size_min": f"{by_area[0][0]}x{by_area[0][1]}",
            "image_size_max": f"{by_area[-1][0]}x{by_area[-1][1]}",
            "image_sizes_sampled": len(self.sizes),
        }


def prepare_dataset(cfg: BenchmarkConfig) -> Dataset:
    """The user's folder, read as it is; or the synthetic set, generated under outputs/datasets/ if absent."""
    from loaderlab.data.folder import scan_class_folders
    from loaderlab.data.storage import is_url

    if cfg.root is not None and is_url(cfg.root):
        root, synthetic = cfg.root.rstrip("/"), False  # credentials and endpoint from the environment
    elif cfg.root is not None:
        root, synthetic = Path(cfg.root).expanduser().resolve(), False
    else:
        root, synthetic = _synthetic_dataset(cfg), True
    paths, _, _ = scan_class_folders(root)  # a DatasetError says what is wrong with a user's folder
    return Dataset(root, len(paths), _sample_sizes(paths), synthetic)


def _synthetic_dataset(cfg: BenchmarkConfig) -> Path:
    """The synthetic set as `data=synthetic` names and draws it, generated under outputs/datasets/."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"data.num_images={cfg.num_images}", f"data.image_size={cfg.image_size}"]
    with initialize_config_dir(config_dir=str(cfg.conf_dir), version_base="1.3"):
        data = compose("config", overrides=["data=synthetic", *overrides]).data
    instantiate(data.manifest, progress=cfg.progress)
    return Path(data.root)


def _sample_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """(height, width) of up to SIZE_SAMPLE files spread over the dataset."""
    import cv2
    import numpy as np

    from loaderlab.data.storage import Storage, is_url

    step = max(1, len(paths) // SIZE_SAMPLE)
    sample = paths[::step][:SIZE_SAMPLE]
    if sample and is_url(sample[0]):  # a store's objects: fetched together
        fetched = [d for d in Storage().read_many(sample) if isinstance(d, bytes)]
        images = [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED) for d in fetched]
    else:
        images = [cv2.imread(path, cv2.IMREAD_UNCHANGED) for path in sample]
    return [image.shape[:2] for image in images if image is not None]
