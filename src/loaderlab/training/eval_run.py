"""`python src/eval.py`: a finished run's best checkpoint on any dataset, logged as an evaluation run."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from loaderlab import tracking
from loaderlab.data.manifest import Split
from loaderlab.data.storage import release_filesystems, storage_of
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.serving import SPEC_FILE
from loaderlab.training.context import RUN_ID_FILE
from loaderlab.training.evaluate import evaluate, log_evaluation, log_skipped
from loaderlab.utils.errors import ConfigError, build
from loaderlab.validate import drop_bad_images

log = logging.getLogger(__name__)
SPLITS = ("all", "train", "val", "test")
# The data keys that decide which file lands in which split: eval.py refuses any that differ from
# the source run's, so that it never scores images the model trained on by accident.
SPLIT_KEYS = (
    "name", "root", "csv", "val_root", "val_csv", "test_root", "test_csv", "class_names",
    "val_fraction", "test_fraction", "split_seed", "num_images", "image_size", "num_classes", "seed",
)  # fmt: skip
# Where a run keeps its best model and its facts: beside the checkpoint, or inside the MLflow Model.
MODEL_FILES = ("checkpoints/best.keras", "model/artifacts/best.keras")
FACTS_FILES = (f"checkpoints/{SPEC_FILE}", f"model/artifacts/{SPEC_FILE}")


def evaluate_run(cfg: DictConfig) -> float:
    """Evaluate the run named by eval.run_id or eval.run_folder on cfg.data; returns the accuracy."""
    try:
        return _evaluate(cfg)
    finally:
        release_filesystems()  # the store connections this job opened end with it, as a training job's


def _evaluate(cfg: DictConfig) -> float:
    run_id = _source_run_id(cfg)
    if cfg.eval.split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {list(SPLITS)}. Received: split={cfg.eval.split}")
    client = MlflowClient(cfg.tracking.uri)
    source = client.get_run(run_id)
    differences = split_differences(source.data.params, tracking.flatten(cfg.data, "data"))
    if differences and not cfg.eval.allow_other_split:
        raise ConfigError(
            f"Run {run_id} split its data with other settings, so this evaluation could score images it "
            "trained on: " + "; ".join(differences) + ". Set these overrides to evaluate on the source "
            "run's split, or eval.allow_other_split=true to evaluate on other data anyway."
        )
    with tempfile.TemporaryDirectory() as scratch:
        facts = json.loads(Path(_download_first(client, run_id, FACTS_FILES, scratch)).read_text())
        best = _download_first(client, run_id, MODEL_FILES, scratch)
        tracking.release_artifact_threads()
        spec = ImageSpec(**facts["spec"])
        _check_compatible(cfg, run_id, spec, facts["class_names"])
        manifest, bad = drop_bad_images(build(cfg.data.manifest), cfg.data.on_bad_image)
        if tuple(manifest.class_names) != tuple(facts["class_names"]):
            raise ConfigError(
                f"Run {run_id} was trained on the classes {facts['class_names']}; this dataset has "
                f"{list(manifest.class_names)}. Evaluate on data with the same class folders or names."
            )
        split = _chosen_split(manifest, cfg.eval.split)
        experiment_id = source.info.experiment_id
        tags = {
            "role": "evaluation",
            "source_run_id": run_id,
            "mlflow.parentRunId": run_id,
            "split_matches_source": str(not differences).lower(),
        }
        name = f"eval of {source.info.run_name}"
        folder = Path(cfg.paths.output_dir)
        with tracking.tracked_run(cfg.tracking.uri, experiment_id, name, tags, folder) as run_log:
            run_log.params(
                {"eval.run_id": run_id, "eval.split": cfg.eval.split, "eval.images": len(split)}
                | {k: v for k, v in tracking.flatten(cfg).items() if k.startswith(("data.", "loader."))}
            )
            import keras

            from loaderlab.models import register_all

            register_all()  # the models' custom layers: Keras does not import them itself
            model = keras.models.load_model(best)
            decoder = ImageDecoder(spec, cfg.data.on_bad_image, storage_of(cfg.data))
            loader = build(cfg.loader)  # a bad knob: its own message, as a ConfigError
            result = evaluate(model, loader, split, decoder, cfg.batch.val, manifest.class_names)
            log_evaluation(run_log, result, folder, "eval")
            log_skipped(run_log, cfg.data.on_bad_image, bad | dict(decoder.skipped), "skipped_images")
    log.info(
        "Run %s on %d images: accuracy %.4f, loss %.4f", run_id, len(split), result.accuracy, result.loss
    )
    return result.accuracy


def split_differences(source_params: dict[str, str], here: dict[str, str]) -> list[str]:
    """Each split-deciding data key whose value differs from the source run's, with its override."""
    out = []
    for key in (f"data.{k}" for k in SPLIT_KEYS):
        theirs, ours = source_params.get(key), here.get(key)
        if theirs == ours or (theirs is None and ours in ("None", "null")):
            continue
        if key == "data.name":
            out.append(f"data={theirs} (source), data={ours} (here)")
        elif theirs is None:
            out.append(f"{key} is {ours} here and unset in the source run")
        else:
            out.append(f"{key}={theirs} (source), {key}={ours} (here)")
    return out


def _download_first(client: MlflowClient, run_id: str, candidates: tuple[str, ...], scratch: str) -> str:
    """The first of the candidate artifacts the run logged, downloaded into scratch."""
    for path in candidates:
        folder, name = path.rsplit("/", 1)
        if any(a.path == path for a in client.list_artifacts(run_id, folder)):
            return client.download_artifacts(run_id, path, scratch)
    raise ConfigError(
        f"Run {run_id} logged no model to evaluate (looked for {', '.join(candidates)}): it ran with "
        "tracking.log_checkpoint=false and tracking.log_model=false, or ended before a finished epoch."
    )


def _source_run_id(cfg: DictConfig) -> str:
    if cfg.eval.run_id:
        return str(cfg.eval.run_id)
    if cfg.eval.run_folder:
        id_file = Path(cfg.eval.run_folder) / RUN_ID_FILE
        if id_file.exists():
            return id_file.read_text().strip()
        raise ConfigError(f"{cfg.eval.run_folder} holds no {RUN_ID_FILE}: give a training run's folder.")
    raise ConfigError(
        "Name the run to evaluate: eval.run_id=<run id> or eval.run_folder=<its run folder> (python "
        "src/compare.py --last 5 lists recent runs). Received: eval.run_id=None, eval.run_folder=None"
    )


def _check_compatible(cfg: DictConfig, run_id: str, spec: ImageSpec, class_names: list[str]) -> None:
    """The data's channels must be the run's; images are resized to the run's own input size."""
    if cfg.data.channels != spec.channels:
        raise ConfigError(
            f"Run {run_id} was trained on {spec.height}x{spec.width} images with {spec.channels} "
            f"channel(s) and the classes {class_names}. Set data.channels={spec.channels} (the input size "
            "comes from the run)."
        )


def _chosen_split(manifest, name: str) -> Split:
    if name == "all":
        parts = [manifest.train, manifest.val, *([manifest.test] if manifest.test else [])]
        return Split(tuple(p for s in parts for p in s.paths), np.concatenate([s.labels for s in parts]))
    chosen = getattr(manifest, name)
    if chosen is None:
        raise ConfigError("eval.split=test needs a test split: set data.test_fraction or data.test_root.")
    return chosen
