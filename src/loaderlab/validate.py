"""Checks that stop a run before training: config values, and a fast pass over every image file."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from omegaconf import DictConfig

from loaderlab.data.manifest import Manifest
from loaderlab.loaders.decode import ON_BAD_IMAGE, BadImageError, ImageSpec

_JPEG, _PNG, _BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"
_TAIL = 1024  # bytes read from the end to find the JPEG/PNG end marker


class ConfigError(ValueError):
    """A config value that cannot work; the message says what to change."""


def check_config(cfg: DictConfig) -> ImageSpec:
    """Check the values training relies on; return the image spec they define."""
    for key in ("batch.train", "batch.val", "trainer.epochs"):
        value = _select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}. Set e.g. {key}=32.")
    if cfg.data.on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(
            f"data.on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {cfg.data.on_bad_image!r}."
        )
    try:
        spec = ImageSpec.from_config(
            cfg.model.input_size, cfg.data.channels, cfg.data.get("scaled_decode", True)
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{e} model.input_size is an int or [height, width]; data.channels is 1 or 3; "
            "data.scaled_decode is true or false."
        ) from None
    minimum = cfg.model.get("min_input_size", 1)
    if min(spec.height, spec.width) < minimum:
        raise ConfigError(
            f"model={cfg.model.name} needs model.input_size of at least {minimum} px, got "
            f"{spec.height}x{spec.width}. Set model.input_size={minimum} or more."
        )
    return spec


def _select(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def inspect_file(path: str) -> str | None:
    """Why a file cannot be a good image, from its size, header and end marker; None if it looks fine."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            return "file is empty (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        return "file does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head.startswith(_JPEG):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head.startswith(_BMP):
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size else f"truncated BMP ({size} of {declared} bytes)"
    return "not a JPEG, PNG or BMP file (unknown header)"


def find_bad_images(paths: tuple[str, ...], workers: int = 16) -> dict[str, str]:
    """Inspect every file in parallel; return {path: reason} for the bad ones."""
    with ThreadPoolExecutor(workers) as pool:
        reasons = pool.map(inspect_file, paths, chunksize=256)
        return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


def drop_bad_images(manifest: Manifest, on_bad_image: str) -> tuple[Manifest, dict[str, str]]:
    """Apply data.on_bad_image to what the pass finds: raise on the first, or leave them out."""
    bad = find_bad_images(manifest.train.paths + manifest.val.paths)
    if not bad:
        return manifest, bad
    if on_bad_image == "error":
        path, reason = next(iter(bad.items()))
        error = BadImageError(path, reason)
        if len(bad) > 1:
            error.args = (f"{error.args[0]} ({len(bad) - 1} more bad file(s) found.)",)
        raise error
    kept = Manifest(manifest.train.drop(set(bad)), manifest.val.drop(set(bad)), manifest.class_names)
    for name, split in (("train", kept.train), ("validation", kept.val)):
        missing = set(range(kept.num_classes)) - set(split.labels.tolist())
        if missing:
            names = [kept.class_names[i] for i in sorted(missing)]
            raise BadImageError(
                next(iter(bad)),
                f"skipping {len(bad)} bad file(s) leaves the {name} split without images of {names}",
            )
    return kept, bad
