"""`root/<class_name>/*.jpg` datasets, the layout of keras.utils.image_dataset_from_directory."""

from __future__ import annotations

import os
from pathlib import Path

from loaderlab.data.manifest import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Manifest,
    assemble,
)
from loaderlab.data.storage import Storage, is_url


def scan_class_folders(
    root: str | Path, class_names: tuple[str, ...] | None = None, storage: Storage | None = None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """List image files under root/<class>/ (recursively, following symlinks; a URL: one listing)."""
    if is_url(str(root)):
        return _scan_store(str(root), class_names, storage or Storage())
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder '{root}' does not exist. Set data.root to a folder laid out as "
            "<root>/<class_name>/<image>.jpg."
        )
    found = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not found:
        raise DatasetError(
            f"Dataset folder '{root}' has no class sub-folders. Expected <root>/<class_name>/<image>.jpg."
        )
    if class_names is not None and found != class_names:
        raise DatasetError(
            f"Class folders of '{root}' are {list(found)}, but the training set has {list(class_names)}. "
            "The validation folder must have the same class folders."
        )
    paths, labels = [], []
    for label, name in enumerate(found):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            files += [
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            ]
        if not files:
            raise DatasetError(
                f"Class folder '{root / name}' has no images ({', '.join(IMAGE_EXTENSIONS)}). "
                "Add images or remove the folder."
            )
        paths += files
        labels += [label] * len(files)
    return paths, labels, found


def _scan_store(
    root: str, class_names: tuple[str, ...] | None, storage: Storage
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Class folders under a URL from the store's paginated listing: no request per object."""
    root = root.rstrip("/")
    by_class: dict[str, list[str]] = {}
    for url in storage.list_files(root):
        name, _, rest = below(root, url).partition("/")
        leaf = rest.rsplit("/", 1)[-1]
        if rest and not name.startswith(".") and not leaf.startswith("."):
            files = by_class.setdefault(name, [])
            if leaf.lower().endswith(IMAGE_EXTENSIONS):
                files.append(url)
    found = tuple(sorted(by_class))
    if not found:
        raise DatasetError(
            f"{root} has no class folders (the prefix is empty or holds no <class_name>/<image> objects). "
            "Check data.root."
        )
    if class_names is not None and found != class_names:
        raise DatasetError(
            f"Class folders of '{root}' are {list(found)}, but the training set has {list(class_names)}. "
            "The validation folder must have the same class folders."
        )
    empty = [name for name in found if not by_class[name]]
    if empty:
        raise DatasetError(
            f"Class folder '{root}/{empty[0]}' has no images ({', '.join(IMAGE_EXTENSIONS)}). "
            "Add images or remove the folder."
        )
    paths = [url for name in found for url in by_class[name]]
    labels = [label for label, name in enumerate(found) for _ in by_class[name]]
    return paths, labels, found


def below(root: str, url: str) -> str:
    """url's path under root, e.g. 'cat/1.jpg'. A store lists URLs in its own scheme, which may not be
    the user's alias of it (az:// lists as abfs://, s3a:// as s3://, gcs:// as gs://), so paths are
    compared without their schemes."""
    prefix = root.split("://", 1)[-1].strip("/") + "/"
    path = url.split("://", 1)[-1].lstrip("/")
    if not path.startswith(prefix):
        raise DatasetError(f"The store listed {url} for {root}, which is not under it.")
    return path[len(prefix) :]


def folder_manifest(
    root: str,
    val_root: str | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    storage_options: dict | None = None,
    test_root: str | None = None,
    test_fraction: float = 0.0,
) -> Manifest:
    """Read a class-folder dataset (a path or any fsspec URL), split by seed or by separate folders."""
    storage = Storage(dict(storage_options or {}))
    paths, labels, class_names = scan_class_folders(root, storage=storage)
    val = scan_class_folders(val_root, class_names, storage)[:2] if val_root is not None else None
    test = scan_class_folders(test_root, class_names, storage)[:2] if test_root is not None else None
    return assemble(
        (paths, labels),
        class_names,
        val,
        test,
        (val_fraction, test_fraction, split_seed),
        ("data.root", "data.val_root", "data.test_root"),
    )
