"""Checks that stop a run before training: config values, and a fast pass over every image file."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import DictConfig

from loaderlab.data.manifest import Manifest
from loaderlab.data.storage import is_url
from loaderlab.loaders.augment import Augment
from loaderlab.loaders.decode import ON_BAD_IMAGE, BadImageError, ImageSpec
from loaderlab.loaders.headers import TAIL_BYTES, image_verdict
from loaderlab.utils.errors import ConfigError


def check_required(cfg: DictConfig) -> None:
    """Every required value (`???`) is set; else one ConfigError naming each, e.g. data=folder's root."""
    from omegaconf import OmegaConf

    # Unresolved: OmegaConf.missing_keys resolves interpolations, and fails on one that reaches a `???`.
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        examples = {"data.root": "/path/to/class_folders", "data.csv": "/path/to/table.csv"}
        sets = " ".join(f"{key}={examples.get(key, '<value>')}" for key in missing)
        raise ConfigError(
            f"{', '.join(missing)} must be set: add {sets} to the command. "
            f"Received: {', '.join(f'{key}=???' for key in missing)}"
        )


def _missing_keys(node: object, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???` in an unresolved container."""
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _missing_keys(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [key for i, v in enumerate(node) for key in _missing_keys(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []


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
        spec = spec_of(cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{e} model.input_size is an int or [height, width]; data.channels is 1 or 3; "
            "data.scaled_decode is true or false; data.resize is squash, crop or pad."
        ) from None
    _check_augment(cfg)
    minimum = cfg.model.get("min_input_size", 1)
    if min(spec.height, spec.width) < minimum:
        raise ConfigError(
            f"model={cfg.model.name} needs model.input_size of at least {minimum} px, got "
            f"{spec.height}x{spec.width}. Set model.input_size={minimum} or more."
        )
    _check_training_options(cfg)
    return spec


def spec_of(cfg: DictConfig) -> ImageSpec:
    """The decode spec that model.input_size and data's channels, scaled_decode, resize and eval_crop set."""
    data = cfg.data
    return ImageSpec.from_config(
        cfg.model.input_size,
        data.channels,
        data.get("scaled_decode", True),
        data.get("resize", "squash"),
        data.get("eval_crop"),
    )


def augment_of(cfg: DictConfig) -> Augment:
    """The training decoder's augment (`augment` group), seeded by trainer.seed unless it sets one."""
    return Augment.from_config(cfg.get("augment"), cfg.trainer.seed)


def _check_augment(cfg: DictConfig) -> None:
    """The augment group's values, and the loaders and strategies that cannot draw it at the decode."""
    try:
        augment = augment_of(cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{e} Choose augment=none|flip|rrc|layers (conf/augment/).") from None
    if not augment.at_decode:
        return
    target = str(cfg.loader.get("_target_", ""))
    refusals = {
        "InMemoryLoader": "loader=inmemory decodes every image once, before training",
        "TFDataServiceLoader": "loader=tfdata_service's workers serve epochs that the job cannot number",
        "KerasLoader": "loader=keras (Keras' image_dataset_from_directory) draws nothing at the decode",
    }
    for name, why in refusals.items():
        if target.endswith(name):
            raise ConfigError(
                f"augment={augment.kind} is drawn per epoch at the decode, but {why}. Set augment=layers "
                f"(in the model) or choose loader=tfdata or loader=packed. Received: augment={augment.kind}"
            )
    if cfg.loader.get("cache"):
        raise ConfigError(
            f"loader.cache keeps decoded images, so augment={augment.kind} cannot be drawn at each decode. "
            f"Set loader.cache=null or augment=layers. Received: cache={cfg.loader.cache!r}"
        )
    if str(cfg.strategy.get("_target_", "")).endswith("multiworker_strategy"):
        raise ConfigError(
            f"strategy=multiworker's loop does not number epochs for the decode: set augment=layers or "
            f"none there. Received: augment={augment.kind}"
        )


def _check_training_options(cfg: DictConfig) -> None:
    """The dtype policy and XLA setting this device can run, the recipe's values, and the weights."""
    from loaderlab.training.precision import dtype_policy_for, jit_compile_for, visible_gpu

    trainer = cfg.trainer
    dtype_policy_for(trainer.get("mixed_precision"), visible_gpu())
    jit_compile_for(trainer.get("jit_compile", "auto"))
    _check_recipe(cfg)
    build, weights = cfg.model.build, cfg.model.get("weights")
    from loaderlab.training.warm_start import check_exists, is_run_reference

    if is_run_reference(weights):
        check_exists(weights)
    elif weights is not None and "application" not in build:
        raise ConfigError(
            f"model={cfg.model.name} has no pretrained base: model.weights is null or an earlier run's, "
            f"runs:/<run_id> or models:/<name>/<version>. Received: weights={weights}"
        )
    elif weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ConfigError(
            "model.weights is not a file. Set model.weights to null, imagenet, the local path of a weights "
            "file of the model's base without its top, or an earlier run: runs:/<run_id> or "
            f"models:/<name>/<version>. Received: weights={weights}"
        )
    if weights == "imagenet" and "application" in build:
        from loaderlab.models.backbone import fetch_imagenet_weights

        fetch_imagenet_weights(build.application, build.get("imagenet_file"), build.get("options"))


def _check_recipe(cfg: DictConfig) -> None:
    """trainer's schedule, smoothing, class weights and phases; callbacks entries that can be built."""
    from loaderlab.training.recipe import LR_SCHEDULES

    trainer = cfg.trainer
    if trainer.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise ConfigError(
            f"trainer.lr_schedule must be one of {list(LR_SCHEDULES)}. "
            f"Received: lr_schedule={trainer.lr_schedule}"
        )
    smoothing = trainer.get("label_smoothing") or 0.0
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"trainer.label_smoothing must be in [0, 1). Received: label_smoothing={smoothing}")
    if smoothing and trainer.loss != "sparse_categorical_crossentropy":
        raise ConfigError(
            "trainer.label_smoothing smooths the sparse cross-entropy only; set trainer.loss="
            f"sparse_categorical_crossentropy or label_smoothing=0. Received: loss={trainer.loss}"
        )
    weights = trainer.get("class_weight")
    if weights is not None and weights != "balanced" and not isinstance(weights, DictConfig):
        raise ConfigError(
            "trainer.class_weight must be null, balanced or {class_index: weight}. "
            f"Received: class_weight={weights}"
        )
    freeze = trainer.get("freeze_epochs") or 0
    if freeze:
        if not 0 < freeze < trainer.epochs:
            raise ConfigError(
                "trainer.freeze_epochs must be between 1 and trainer.epochs - 1, so that phase 2 has epochs. "
                f"Received: freeze_epochs={freeze}, epochs={trainer.epochs}"
            )
        if "application" not in cfg.model.build:
            raise ConfigError(
                f"trainer.freeze_epochs freezes a pretrained base; model={cfg.model.name} has none. Choose a "
                "backbone (model=resnet50, efficientnetv2b0, ...) or set trainer.freeze_epochs=0. "
                f"Received: freeze_epochs={freeze}"
            )
    multiworker = str(cfg.strategy.get("_target_", "")).endswith("multiworker_strategy")
    for key in ("freeze_epochs", "class_weight", "overfit_batches"):
        if multiworker and trainer.get(key):
            raise ConfigError(
                f"trainer.{key} is not run by strategy=multiworker's loop; use strategy=default or mirrored. "
                f"Received: {key}={trainer.get(key)}"
            )
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" not in node:
            raise ConfigError(
                f"callbacks.{name} needs a _target_ (a Keras callback class), or null to turn it off. "
                f"Received: {name}={node}"
            )


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
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return "file does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return image_verdict(head, tail, size)


def find_bad_images(
    paths: tuple[str, ...], workers: int = 16, cache_dir: Path | None = None, progress: bool = True
) -> dict[str, str]:
    """Inspect every local file in parallel; return {path: reason} for the bad ones.

    URLs are left to the read (a store would answer one request per object here). With `cache_dir`,
    verdicts are kept there keyed by path, size and mtime, and only new or changed files are read.
    `progress`: a bar over the files read (utils/progress.py says where it shows).
    """
    from loaderlab.utils.progress import counted

    local = [p for p in paths if not is_url(p)]
    if not local:
        return {}
    with ThreadPoolExecutor(workers) as pool:
        if cache_dir is None:
            checked = pool.map(inspect_file, local)
            reasons = list(counted(checked, len(local), "file", f"Checking {len(local)} files", progress))
        else:
            reasons = _cached_verdicts(local, pool, Path(cache_dir), progress)
    return {p: r for p, r in zip(local, reasons, strict=True) if r is not None}


def _cached_verdicts(
    paths: list[str], pool: ThreadPoolExecutor, cache_dir: Path, progress: bool = True
) -> list[str | None]:
    """inspect_file's verdicts, read from the cache for files whose size and mtime are unchanged."""
    from loaderlab.utils.progress import counted

    folder = os.path.commonpath([min(paths), max(paths)])  # that of all paths, at 1/50th of the cost
    # JSON, a data format: loading a cache from a shared outputs/ must never run code (a pickle can).
    cache = cache_dir / f"{hashlib.sha256(folder.encode()).hexdigest()[:16]}.json"
    stats = _stat_all(paths)  # one thread: stat is quick and threads would fight over the GIL
    try:
        with open(cache, encoding="utf-8") as f:
            known: dict[str, list] = json.load(f)  # path: [size, mtime_ns, reason or null]
    except (OSError, ValueError):
        known = {}
    reasons: list[str | None] = [None] * len(paths)
    todo = []
    for i, (path, stat) in enumerate(zip(paths, stats, strict=True)):
        hit = known.get(path)
        if stat is not None and isinstance(hit, list) and len(hit) == 3 and tuple(hit[:2]) == stat:
            reasons[i] = hit[2]
        else:
            todo.append(i)
    checked = pool.map(inspect_file, [paths[i] for i in todo])
    title = f"Checking {len(todo)} new or changed files of {len(paths)}"
    for i, reason in zip(todo, counted(checked, len(todo), "file", title, progress), strict=True):
        reasons[i] = reason
    if todo or len(known) != len(paths):  # keep exactly this dataset's files, written atomically
        fresh = {p: (*s, r) for p, s, r in zip(paths, stats, reasons, strict=True) if s is not None}
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(fresh, f, separators=(",", ":"))
        os.replace(partial, cache)
    return reasons


def _stat_all(paths: list[str]) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
            out.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append(None)
    return out


def drop_bad_images(
    manifest: Manifest, on_bad_image: str, cache_dir: Path | None = None, progress: bool = True
) -> tuple[Manifest, dict[str, str]]:
    """Apply data.on_bad_image to what the pass finds: raise on the first, or leave them out."""
    test_paths = manifest.test.paths if manifest.test is not None else ()
    every = manifest.train.paths + manifest.val.paths + test_paths
    bad = find_bad_images(every, cache_dir=cache_dir, progress=progress)
    if not bad:
        return manifest, bad
    if on_bad_image == "error":
        path, reason = next(iter(bad.items()))
        error = BadImageError(path, reason)
        if len(bad) > 1:
            error.args = (f"{error.args[0]} ({len(bad) - 1} more bad file(s) found.)",)
        raise error
    test = manifest.test.drop(set(bad)) if manifest.test is not None else None
    kept = Manifest(manifest.train.drop(set(bad)), manifest.val.drop(set(bad)), manifest.class_names, test)
    splits = [("train", kept.train), ("validation", kept.val), *([("test", test)] if test else [])]
    for name, split in splits:
        missing = set(range(kept.num_classes)) - set(split.labels.tolist())
        if missing:
            names = [kept.class_names[i] for i in sorted(missing)]
            raise BadImageError(
                next(iter(bad)),
                f"skipping {len(bad)} bad file(s) leaves the {name} split without images of {names}",
            )
    return kept, bad
