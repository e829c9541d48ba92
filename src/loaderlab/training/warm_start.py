"""A warm start: model.weights=runs:/<run_id> or models:/<name>/<version> loads an earlier run's model
into this one, layer by layer where the shapes match (the whole base; the head where the classes match)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import keras
import numpy as np

from loaderlab.loaders.base import Feed
from loaderlab.run_log import RunLog
from loaderlab.utils.errors import ConfigError

log = logging.getLogger(__name__)

RUN_REFERENCES = ("runs:/", "models:/")


def is_run_reference(weights: object) -> bool:
    """Whether model.weights names an earlier run or a registered model version."""
    return isinstance(weights, str) and weights.startswith(RUN_REFERENCES)


def check_exists(reference: str) -> None:
    """A ConfigError, before any data is read, where the run or model version is not in the store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if reference.startswith("runs:/"):
            client.get_run(_run_id(reference))
        else:
            name, _, version = reference[len("models:/") :].strip("/").partition("/")
            client.get_model_version(name, version)
    except MlflowException as e:
        raise ConfigError(
            f"model.weights={reference}: not found in tracking.uri's store ({e.message}). Set model.weights "
            "to runs:/<run_id> or models:/<name>/<version> of this store, or to a weights file."
        ) from None


def load(model: keras.Model, reference: str, run_log: RunLog) -> None:
    """Copy the referenced run's weights into `model` where the layers match; log what was copied."""
    from loaderlab.models import register_all

    register_all()  # the saved model's custom layers and losses
    with tempfile.TemporaryDirectory(prefix="loaderlab-warm-") as folder:
        source = keras.models.load_model(_download(reference, Path(folder)), compile=False)
    loaded, skipped = transfer_weights(source, model)
    log.info("Warm start from %s: %d layers loaded, %s left as built", reference, loaded, skipped or "none")
    run_log.params(
        {"warm_start.layers_loaded": loaded, "warm_start.layers_skipped": ",".join(skipped) or "none"}
    )


def transfer_weights(source: keras.Model, target: keras.Model) -> tuple[int, list[str]]:
    """Set each target layer's weights from the source layer in the same place, where class and shapes
    match; return the count loaded and the names of the layers with weights left as built."""
    if len(source.layers) != len(target.layers):
        raise ConfigError(
            f"model.weights: the earlier run's model ({source.name}, {len(source.layers)} layers) is not "
            f"this run's ({target.name}, {len(target.layers)} layers). Set model= to what that run trained."
        )
    loaded, skipped = 0, []
    for old, new in zip(source.layers, target.layers, strict=True):
        new_weights, old_weights = new.get_weights(), old.get_weights()
        if not new_weights:
            continue
        if type(old) is type(new) and [w.shape for w in old_weights] == [w.shape for w in new_weights]:
            new.set_weights(old_weights)
            loaded += 1
        else:
            skipped.append(new.name)
    return loaded, skipped


def log_initial_evaluation(model: keras.Model, val_feed: Feed, run_log: RunLog) -> None:
    """The warm-started model on the validation split before any training: initial_val_loss and the rest."""
    result = model.evaluate(**val_feed.evaluate_kwargs(), return_dict=True, verbose=0)
    run_log.metrics({f"initial_val_{k}": float(v) for k, v in result.items() if np.isscalar(v)})


def _run_id(reference: str) -> str:
    return reference[len("runs:/") :].strip("/").split("/")[0]


def _download(reference: str, folder: Path) -> Path:
    """The Keras file behind the reference: a run's MLflow Model, else its best checkpoint."""
    import mlflow
    from mlflow.exceptions import MlflowException

    candidates = [reference]
    if reference.startswith("runs:/") and reference.strip("/").count("/") == 1:
        candidates = [f"runs:/{_run_id(reference)}/model", f"runs:/{_run_id(reference)}/checkpoints"]
    for uri in candidates:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
        except (MlflowException, OSError):  # no such artifact: try the next place
            continue
        found = sorted(local.rglob("*.keras")) if local.is_dir() else [local]
        if found:
            return found[0]
    raise ConfigError(
        f"model.weights={reference}: that run logged no Keras model (artifact model/ or "
        "checkpoints/best.keras). Name a run that ran with tracking.log_model or tracking.log_checkpoint on."
    )
