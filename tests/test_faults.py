"""Faults in a real process: SIGTERM mid-epoch and a PyDataset worker killed mid-epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from loaderlab import PROJECT_ROOT

pytestmark = pytest.mark.slow


class TrainProcess:
    """python src/train.py with worker processes, its output read line by line."""

    def __init__(self, tmp_path: Path, tiny_root: Path, *overrides: str):
        command = [
            sys.executable,
            str(PROJECT_ROOT / "src" / "train.py"),
            f"paths.outputs={tmp_path}",
            f"data.root={tiny_root}",
            *(f"data.{k}={v}" for k, v in TINY.items()),
            "model.input_size=32",
            "trainer.epochs=200",
            "trainer.verbose=2",
            "trainer.early_stopping_patience=null",
            "batch.train=2",
            "batch.val=16",
            "loader=sequence",
            "loader.use_multiprocessing=true",
            "loader.workers=2",
            "hydra.run.dir=" + str(tmp_path / "run"),
            *overrides,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.tmp_path = tmp_path

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines[-40:])
            assert time.monotonic() < deadline, f"no {text!r} in time:\n" + "".join(self.lines[-40:])
            time.sleep(0.2)

    def workers(self, timeout_s: float = 10) -> list[psutil.Process]:
        """The pool's worker processes, waited for (Keras makes a new pool every epoch)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            children = psutil.Process(self.proc.pid).children()
            pool = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
            if pool:
                return pool
            time.sleep(0.01)
        raise AssertionError("expected PyDataset worker processes")

    def run(self):
        client = MlflowClient(f"sqlite:///{self.tmp_path}/mlflow.db")
        experiment = client.get_experiment_by_name("loaderlab")
        [run] = client.search_runs([experiment.experiment_id])
        return run


def test_sigterm_mid_epoch_ends_killed_with_checkpoint_and_no_workers(
    tmp_path: Path, tiny_root: Path
) -> None:
    job = TrainProcess(tmp_path, tiny_root)
    try:
        job.wait_for("Epoch 3/")
        workers = job.workers()  # mid-epoch
        job.proc.send_signal(signal.SIGTERM)
        assert job.proc.wait(timeout=120) != 0
    finally:
        job.proc.kill()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes left behind: {alive}"
    run = job.run()
    assert run.info.status == "KILLED"
    import keras

    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / "best.keras")
    assert model.output_shape == (None, TINY["num_classes"])


def test_a_killed_worker_fails_the_run_instead_of_hanging(tmp_path: Path, tiny_root: Path) -> None:
    job = TrainProcess(tmp_path, tiny_root, "trainer.stall_timeout_s=8")
    try:
        job.wait_for("Epoch 2/")
        workers = job.workers()
        for worker in workers:
            worker.kill()
        assert job.proc.wait(timeout=90) != 0
    finally:
        job.proc.kill()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    run = job.run()
    assert run.info.status == "FAILED"
    assert "data worker process may have died" in run.data.tags["error"]
