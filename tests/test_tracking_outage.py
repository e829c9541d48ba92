"""A tracking server that goes away mid-run costs no metric: a real `mlflow server`, stopped and restarted
on the same port and store while `python src/train.py` trains against it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import train_command
from helpers import free_ports, wait_for_health
from loaderlab import PROJECT_ROOT

pytestmark = pytest.mark.slow
EPOCHS = 6
# MLflow's own retries off: only the project's journal can carry metrics across the outage.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Server:
    """`mlflow server` on 127.0.0.1 that can be stopped and started again on the same port and store."""

    def __init__(self, folder: Path):
        [self.port] = free_ports(1)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination", str(self.folder / "server-artifacts"), "--workers", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_health(self.uri, timeout_s=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 60
        while _answers(self.uri) and time.monotonic() < deadline:  # its workers too
            time.sleep(0.2)


def _answers(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False


class Job:
    """python src/train.py against the server, its output read line by line."""

    def __init__(self, tmp_path: Path, tiny_root: Path, uri: str, *overrides: str):
        self.folder = tmp_path / "run"
        command = train_command(
            tmp_path,
            tiny_root,
            f"tracking.uri={uri}",
            "tracking.artifact_location=null",
            f"trainer.epochs={EPOCHS}",
            "trainer.early_stopping_patience=null",
            "batch.train=8",
            f"hydra.run.dir={self.folder}",
            *overrides,
        )
        env = {**os.environ, **NO_RETRIES, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None or text in self.output, self.output[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in time:\n{self.output[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout_s: float = 600) -> int:
        code = self.proc.wait(timeout=timeout_s)
        time.sleep(0.5)  # the reader thread drains the last lines
        return code


def assert_every_epoch_delivered(uri: str, experiment: str) -> None:
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("val_loss", "loss", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), f"{key}: {steps}"
    assert {"peak_rss_mb", "best_val_loss", "images_per_sec"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train.log", "checkpoints", ".hydra"} <= artifacts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module: each test leaves it running, and logs to its own experiment."""
    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


def test_an_outage_mid_run_loses_no_metric(tmp_path: Path, tiny_root: Path, server: Server) -> None:
    job = Job(tmp_path, tiny_root, server.uri, "tracking.experiment=outage-mid-run")
    try:
        job.wait_for("Epoch 2/")
        down_at = time.monotonic()
        server.stop()
        job.wait_for("does not answer")  # the job noticed, and trains on
        job.wait_for(f"Epoch {EPOCHS - 2}/")
        server.start()
        print(f"\nOUTAGE server down for {time.monotonic() - down_at:.0f} s, across epochs 2..{EPOCHS - 2}")
        assert job.finish() == 0, job.output[-3000:]
    finally:
        job.proc.kill()
    assert "is back after" in job.output
    assert not list(job.folder.glob("mlflow-journal-*"))  # all delivered: nothing kept
    assert_every_epoch_delivered(server.uri, "outage-mid-run")


def test_a_run_that_ends_during_an_outage_keeps_its_metrics_for_deliver_py(
    tmp_path: Path, tiny_root: Path, server: Server
) -> None:
    job = Job(
        tmp_path, tiny_root, server.uri, "tracking.outage_wait_s=2", "tracking.experiment=outage-at-end"
    )
    try:
        job.wait_for("Epoch 2/")
        server.stop()
        assert job.finish() == 0, job.output[-3000:]  # the training itself went fine
    finally:
        job.proc.kill()
    assert f"python src/deliver.py {job.folder}" in job.output
    [journal] = job.folder.glob("mlflow-journal-*.jsonl")
    server.start()
    deliver = [sys.executable, str(PROJECT_ROOT / "src" / "deliver.py"), str(job.folder)]
    result = subprocess.run(deliver, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered" in result.stdout and not journal.exists()
    assert_every_epoch_delivered(server.uri, "outage-at-end")
