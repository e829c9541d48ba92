"""Scale-out on existing engines: tf.data service, tf.distribute workers, an MLflow server over HTTP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from helpers import make_mixed_dataset
from loaderlab import PROJECT_ROOT
from loaderlab.data.folder import folder_manifest
from loaderlab.loaders import ImageDecoder, ImageSpec
from loaderlab.training.run import train
from test_loaders import collect, make_loader
from test_train import latest_run


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


def test_tfdata_service_trains(make_cfg, tracking_uri: str, data_service: str) -> None:
    best = train(make_cfg("loader=tfdata_service", f"loader.dispatcher={data_service}", "trainer.epochs=2"))
    assert math.isfinite(best)
    run = latest_run(tracking_uri, "tests")
    assert run.data.tags["loader"] == "tfdata_service" and run.data.metrics["images_per_sec"] > 0


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_multiworker_workers_refuse_clearly_and_the_chief_logs_why(
    tmp_path: Path, tiny_root: Path
) -> None:
    """Keras 3's fit cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585): both
    workers must stop at once with that message, and the chief's run must say so, not hang."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    jobs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        command = [
            sys.executable,
            str(PROJECT_ROOT / "src" / "train.py"),
            "strategy=multiworker",
            "loader=tfdata",
            f"paths.outputs={tmp_path}",
            f"data.root={tiny_root}",
            *(f"data.{k}={v}" for k, v in TINY.items()),
            "model.input_size=32",
            "trainer.epochs=1",
            "trainer.verbose=2",
            "batch.train=8",
            "batch.val=8",
            f"hydra.run.dir={tmp_path}/worker{index}",
        ]
        jobs.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [1, 1]
    assert all("keras-team/keras#20585" in output for output in outputs)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])  # the chief's only
    assert run.info.status == "FAILED" and "MultiWorkerMirroredStrategy" in run.data.tags["error"]
    assert (tmp_path / "worker1" / "worker1-mlflow.db").exists()  # the other worker kept its own store


@pytest.mark.slow
def test_training_against_a_real_mlflow_server_over_http(tmp_path: Path, tiny_root: Path) -> None:
    [port] = free_ports(1)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for_health(uri)
        result = subprocess.run(
            [
                sys.executable,
                str(PROJECT_ROOT / "src" / "train.py"),
                f"tracking.uri={uri}",
                "tracking.artifact_location=null",
                f"paths.outputs={tmp_path}",
                f"data.root={tiny_root}",
                *(f"data.{k}={v}" for k, v in TINY.items()),
                "model.input_size=32",
                "trainer.epochs=1",
                "trainer.verbose=2",
                "batch.train=16",
                "batch.val=16",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])
        assert run.info.status == "FINISHED" and "peak_rss_mb" in run.data.metrics
        assert "train.log" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_health(uri: str, timeout_s: float = 60) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
