"""Scale-out on existing engines: tf.data service, tf.distribute workers, an MLflow server over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import ADMIN, ADMIN_PASSWORD, PASSWORD, USER, train_command
from helpers import make_mixed_dataset
from loaderlab import PROJECT_ROOT
from loaderlab.data.folder import folder_manifest
from loaderlab.loaders import ImageDecoder, ImageSpec
from test_loaders import collect, make_loader


@pytest.fixture(scope="module")
def data_service():
    """An in-process dispatcher with two workers on 127.0.0.1."""
    from loaderlab.data_service import start_dispatcher, start_worker

    dispatcher = start_dispatcher(0)
    workers = [start_worker(dispatcher.target, 0) for _ in range(2)]
    yield dispatcher.target
    for server in [*workers, dispatcher]:
        server.stop()


@pytest.mark.parametrize("data", ["tiny", "mixed"])
def test_tfdata_service_serves_the_same_pixels_as_tfdata(
    data_service: str, tiny_root: Path, tmp_path: Path, data: str
) -> None:
    """The service decodes with TF ops, at the same libjpeg scale as OpenCV (mixed: every scale)."""
    from loaderlab.loaders.tfdata_service import TFDataServiceLoader

    root = tiny_root if data == "tiny" else make_mixed_dataset(tmp_path / "mixed")
    manifest = folder_manifest(str(root), val_fraction=0.25)
    for channels in (3, 1):
        decoder = ImageDecoder(ImageSpec(36, 28, channels))
        served = TFDataServiceLoader(dispatcher=data_service, processing_mode="distributed_epoch")
        images, labels = collect(served.feed(manifest.val, decoder, 7, training=False))
        local_images, local_labels = collect(
            make_loader("tfdata", deterministic=True).feed(manifest.val, decoder, 7, training=False)
        )
        # Two workers share the epoch, so batches arrive in any order: match images by file.
        assert sorted(labels.tolist()) == sorted(local_labels.tolist())
        order, local_order = (
            np.lexsort((x.reshape(len(x), -1).sum(1), y))
            for x, y in ((images, labels), (local_images, local_labels))
        )
        diff = np.abs(images[order].astype(np.float32) - local_images[local_order]).mean()
        assert diff <= 1.0, f"channels={channels}: {diff:.3f} grey levels"


def train_against(uri: str, outputs: Path, data_root: Path, experiment: str, credentials: dict[str, str]):
    """train.py for one epoch against the server, with only the given MLflow credentials set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return subprocess.run(
        [
            *train_command(outputs, data_root, "trainer.epochs=1", "tracking.artifact_location=null"),
            f"tracking.uri={uri}",
            f"tracking.experiment={experiment}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", **credentials},
    )


def admin_client(monkeypatch: pytest.MonkeyPatch, uri: str) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(uri)


@pytest.mark.slow
def test_a_team_member_trains_against_the_auth_server_and_no_credential_is_logged(
    auth_server: str, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    result = train_against(auth_server, tmp_path, tiny_root, "auth-ok", credentials)
    assert result.returncode == 0, result.stderr[-3000:]
    client = admin_client(monkeypatch, auth_server)
    [run] = client.search_runs([client.get_experiment_by_name("auth-ok").experiment_id])
    assert run.info.status == "FINISHED" and "val_loss" in run.data.metrics
    assert run.data.tags["mlflow.user"] == USER  # MLflow records who logged the run: the login, not a secret
    logged = [*run.data.params.items(), *run.data.tags.items()]
    assert not [(k, v) for k, v in logged if PASSWORD in v or "MLFLOW_TRACKING" in k or "password" in k]
    assert not [k for k, v in run.data.params.items() if USER in v]
    run_log = client.download_artifacts(run.info.run_id, "train.log", str(tmp_path))
    for text in (Path(run_log).read_text(), result.stdout, result.stderr):
        assert PASSWORD not in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "credentials",
    [{"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, {}],
    ids=["wrong", "missing"],
)
def test_refused_credentials_stop_train_at_start_up_naming_the_variables(
    auth_server: str,
    tmp_path: Path,
    tiny_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    credentials: dict[str, str],
) -> None:
    result = train_against(auth_server, tmp_path, tiny_root, "auth-refused", credentials)
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in result.stderr
    assert "Data:" not in result.stdout + result.stderr  # stopped before reading the dataset
    assert admin_client(monkeypatch, auth_server).get_experiment_by_name("auth-refused") is None


@pytest.mark.slow
def test_refused_credentials_stop_compare_naming_the_variables(auth_server: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "compare.py"), "--tracking-uri", auth_server],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "not-the-password"},
    )
    assert result.returncode == 1
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in result.stderr
