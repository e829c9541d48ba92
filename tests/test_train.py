"""Training jobs in-process: every loader and model trains, and the MLflow run carries the contract."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from helpers import make_folder_dataset
from loaderlab.tracking import TrackingUnavailableError
from loaderlab.training import callbacks as callbacks_module
from loaderlab.training.run import train

EPOCH_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s", "epoch_images_per_sec"}
RUN_METRICS = {"peak_rss_mb", "baseline_rss_mb", "images_per_sec", "time_to_first_batch_s", "best_val_loss"}
TAGS = {
    "loader",
    "model",
    "dataset",
    "device",
    "git_commit",
    "hydra_overrides",
    "sweep_id",
    "process_isolated",
    "rss_method",
}


def latest_run(uri: str, experiment: str) -> Run:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ["loader=inmemory"],
        ["loader=generator"],
        ["loader=sequence"],
        ["loader=tfdata"],
        ["loader=sequence", "loader.use_multiprocessing=true", "loader.workers=2"],
    ],
    ids=["inmemory", "generator", "sequence", "tfdata", "sequence-processes"],
)
def test_each_loader_trains_and_logs_the_contract(make_cfg, tracking_uri: str, overrides) -> None:
    cfg = make_cfg(*overrides, "trainer.epochs=2")
    best = train(cfg)
    assert math.isfinite(best)
    run = latest_run(tracking_uri, "tests")
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EPOCH_METRICS | RUN_METRICS
    assert set(run.data.tags) >= TAGS
    assert run.data.tags["loader"] == overrides[0].split("=")[1]
    assert run.data.tags["device"] == "CPU" and "gpu_peak_mb" not in run.data.metrics
    assert run.data.metrics["best_val_loss"] == pytest.approx(best)
    assert run.data.metrics["peak_rss_mb"] >= run.data.metrics["baseline_rss_mb"] > 0
    assert run.data.metrics["images_per_sec"] > 0
    assert run.data.params["batch.train"] == "16" and run.data.params["model.name"] == "small_cnn"
    client = MlflowClient(tracking_uri)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert logged == ["checkpoints/best.keras", "checkpoints/loaderlab_model.json"]  # eval.py needs both


def test_grayscale_and_rectangular_input(make_cfg) -> None:
    assert math.isfinite(train(make_cfg("data.channels=1", "model.input_size=[32,48]")))


def test_a_failing_job_ends_failed_with_its_error(make_cfg, tracking_uri: str, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "ds", {"a": 6, "b": 6})
    (root / "a" / "002.jpg").write_bytes(b"")
    cfg = make_cfg("data=folder", f"data.root={root}", experiment="tests-failures")
    with pytest.raises(Exception, match="002.jpg"):
        train(cfg)
    run = latest_run(tracking_uri, "tests-failures")
    assert run.info.status == "FAILED"
    assert "file is empty" in run.data.tags["error"]
    assert "error.txt" in [a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)]


def test_a_config_error_stops_the_job_before_its_run_opens(make_cfg, tracking_uri: str) -> None:
    from loaderlab.utils.errors import ConfigError

    experiment = "tests-config-errors"
    with pytest.raises(ConfigError, match="batch.train must be a positive integer"):
        train(make_cfg("batch.train=0", experiment=experiment))
    missing = r"data.root must be set: add data.root=.*Received: data.root=\?\?\?"
    with pytest.raises(ConfigError, match=missing):
        train(make_cfg("data=folder", experiment=experiment))
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is None or not client.search_runs([found.experiment_id])  # no FAILED run for a config error


def test_ctrl_c_ends_the_run_killed(make_cfg, tracking_uri: str, monkeypatch) -> None:
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    original = callbacks_module.job_callbacks
    monkeypatch.setattr(callbacks_module, "job_callbacks", lambda *a: [*original(*a), Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(experiment="tests-failures"))
    run = latest_run(tracking_uri, "tests-failures")
    assert run.info.status == "KILLED"
    assert "peak_rss_mb" in run.data.metrics  # what was measured before the interrupt is kept


def test_unreachable_tracking_server_fails_fast(make_cfg) -> None:
    start = time.perf_counter()
    with pytest.raises(TrackingUnavailableError, match="cannot be reached"):
        train(make_cfg("tracking.uri=http://127.0.0.1:9"))
    assert time.perf_counter() - start < 30  # not MLflow's minutes of retries


def test_an_exception_mid_fit_fails_the_run_and_stops_its_worker_processes(
    make_cfg, tracking_uri: str, monkeypatch
) -> None:
    import keras
    import psutil

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom at the end of epoch 2")

    original = callbacks_module.job_callbacks
    monkeypatch.setattr(callbacks_module, "job_callbacks", lambda *a: [*original(*a), Boom()])
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    processes = ["loader=sequence", "loader.use_multiprocessing=true", "loader.workers=2"]
    cfg = make_cfg(*processes, "trainer.epochs=4")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    left = [p for p in left if "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, f"worker processes left: {left}"
    run = latest_run(tracking_uri, "tests")
    assert run.info.status == "FAILED" and "boom" in run.data.tags["error"]
