"""`python src/eval.py`: a finished run's best checkpoint on any dataset, logged as an evaluation run."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from loaderlab import tracking
from loaderlab.data.manifest import Split
from loaderlab.data.storage import storage_of
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.serving import SPEC_FILE
from loaderlab.training.context import RUN_ID_FILE
from loaderlab.training.evaluate import evaluate, log_evaluation
from loaderlab.validate import ConfigError, drop_bad_images

log = logging.getLogger(__name__)
SPLITS = ("all", "train", "val", "test")


def evaluate_run(cfg: DictConfig) -> float:
    """Evaluate the run named by eval.run_id or eval.run_folder on cfg.data; returns the accuracy."""
    run_id = _source_run_id(cfg)
    if cfg.eval.split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {list(SPLITS)}. Received: split={cfg.eval.split}")
    client = MlflowClient(cfg.tracking.uri)
    source = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as scratch:
        facts_file = client.download_artifacts(run_id, f"model/artifacts/{SPEC_FILE}", scratch)
        facts = json.loads(Path(facts_file).read_text())
        best = client.download_artifacts(run_id, "checkpoints/best.keras", scratch)
        tracking.release_artifact_threads()
        spec = ImageSpec(**facts["spec"])
        _check_compatible(cfg, run_id, spec, facts["class_names"])
        manifest, _ = drop_bad_images(instantiate(cfg.data.manifest), cfg.data.on_bad_image)
        if tuple(manifest.class_names) != tuple(facts["class_names"]):
            raise ConfigError(
                f"Run {run_id} was trained on the classes {facts['class_names']}; this dataset has "
                f"{list(manifest.class_names)}. Evaluate on data with the same class folders or names."
            )
        split = _chosen_split(manifest, cfg.eval.split)
        experiment_id = source.info.experiment_id
        tags = {"role": "evaluation", "source_run_id": run_id, "mlflow.parentRunId": run_id}
        name = f"eval of {source.info.run_name}"
        folder = Path(cfg.paths.output_dir)
        with tracking.tracked_run(cfg.tracking.uri, experiment_id, name, tags, folder) as run_log:
            run_log.params(
                {"eval.run_id": run_id, "eval.split": cfg.eval.split, "eval.images": len(split)}
                | {k: v for k, v in tracking.flatten(cfg).items() if k.startswith(("data.", "loader."))}
            )
            import keras

            model = keras.models.load_model(best)
            decoder = ImageDecoder(spec, cfg.data.on_bad_image, storage_of(cfg.data))
            loader = instantiate(cfg.loader)
            result = evaluate(model, loader, split, decoder, cfg.batch.val, manifest.class_names)
            log_evaluation(run_log, result, folder, "eval")
    log.info(
        "Run %s on %d images: accuracy %.4f, loss %.4f", run_id, len(split), result.accuracy, result.loss
    )
    return result.accuracy


def _source_run_id(cfg: DictConfig) -> str:
    if cfg.eval.run_id:
        return str(cfg.eval.run_id)
    if cfg.eval.run_folder:
        id_file = Path(cfg.eval.run_folder) / RUN_ID_FILE
        if id_file.exists():
            return id_file.read_text().strip()
        raise ConfigError(f"{cfg.eval.run_folder} holds no {RUN_ID_FILE}: give a training run's folder.")
    raise ConfigError("Name the run to evaluate: eval.run_id=<run id> or eval.run_folder=<its run folder>.")


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
