"""Faults in a real process: every way a run is stopped ends its whole process tree, and the run's status.

Each job starts in a session of its own; after it ends, no process of that session may remain,
including PyDataset workers the pool started to replace killed ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, train_command

pytestmark = pytest.mark.slow
STALL_S = 30  # the watchdog test's trainer.stall_timeout_s
PROCESSES = ["loader=sequence", "loader.use_multiprocessing=true", "loader.workers=2"]
LOADERS = {
    "generator": ["loader=generator"],
    "sequence-processes": PROCESSES,
    "tfdata": ["loader=tfdata"],
}


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of a session (zombies hold no memory and are not counted)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return found


class TrainProcess:
    """python src/train.py in a new session, its output read line by line."""

    def __init__(self, tmp_path: Path, tiny_root: Path, *overrides: str):
        command = train_command(
            tmp_path,
            tiny_root,
            "trainer.epochs=200",
            "~callbacks.early_stopping",
            "batch.train=2",
            "hydra.run.dir=" + str(tmp_path / "run"),
            *overrides,
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.tmp_path = tmp_path

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        """Wait for a line of output holding text."""
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines[-40:])
            assert time.monotonic() < deadline, f"no {text!r} in time:\n" + "".join(self.lines[-40:])
            time.sleep(0.2)

    def workers(self, timeout_s: float = 120) -> list[psutil.Process]:
        """The pool's worker processes, waited for (Keras makes a new pool every epoch)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pool = []
            for child in psutil.Process(self.proc.pid).children():
                try:
                    if "resource_tracker" not in " ".join(child.cmdline()):
                        pool.append(child)
                except psutil.NoSuchProcess:  # a killed worker, gone or a zombie
                    continue
            if pool:
                return pool
            time.sleep(0.05)
        raise AssertionError("expected PyDataset worker processes")

    def stop_and_time(self, send, timeout_s: float = 120) -> float:
        """Stop the job with send(); return the seconds until the main process exited."""
        start = time.monotonic()
        send()
        self.proc.wait(timeout=timeout_s)
        return time.monotonic() - start

    def assert_session_ends(self, timeout_s: float = 60) -> None:
        """No process of the job's session is left once the job is over."""
        deadline = time.monotonic() + timeout_s
        while (left := session_processes(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}"

    def kill(self) -> None:
        """Whatever happened in the test, leave nothing running."""
        self.proc.kill()
        for proc in session_processes(self.proc.pid):
            proc.kill()

    def run(self):
        """The job's MLflow run."""
        client = MlflowClient(f"sqlite:///{self.tmp_path}/mlflow.db")
        experiment = client.get_experiment_by_name("loaderlab")
        [run] = client.search_runs([experiment.experiment_id])
        return run


# inmemory and generator start no process of their own (tfdata, the default, stands for them), and a
# threaded sequence job's SIGTERM is in test_one_process.
@pytest.mark.parametrize("loader", ["sequence-processes", "tfdata"])
def test_sigterm_mid_epoch_ends_killed_with_the_whole_tree(
    tmp_path: Path, tiny_root: Path, loader: str
) -> None:
    job = TrainProcess(tmp_path, tiny_root, *LOADERS[loader])
    try:
        job.wait_for("Epoch 3/")
        seconds = job.stop_and_time(lambda: job.proc.send_signal(signal.SIGTERM))
        assert job.proc.returncode != 0
        job.assert_session_ends()
    finally:
        job.kill()
    print(f"\nSTOP SIGTERM loader={loader} exit_s={seconds:.2f} left=0")
    assert seconds < 60
    run = job.run()
    assert run.info.status == "KILLED"
    import keras

    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / "best.keras")
    assert model.output_shape == (None, TINY["num_classes"])


@pytest.mark.parametrize("loader", ["sequence-processes"])  # the pool's processes get the signal too
def test_ctrl_c_to_the_process_group_ends_killed_with_the_whole_tree(
    tmp_path: Path, tiny_root: Path, loader: str
) -> None:
    job = TrainProcess(tmp_path, tiny_root, *LOADERS[loader])
    try:
        job.wait_for("Epoch 3/")
        if loader == "sequence-processes":
            job.workers()  # the pool is up, and gets the signal too
        seconds = job.stop_and_time(lambda: os.killpg(job.proc.pid, signal.SIGINT))
        job.assert_session_ends()
    finally:
        job.kill()
    print(f"\nSTOP SIGINT-group loader={loader} exit_s={seconds:.2f} left=0")
    assert seconds < 60
    assert job.run().info.status == "KILLED"


def test_killed_workers_fail_the_run_and_the_watchdog_ends_the_tree(tmp_path: Path, tiny_root: Path) -> None:
    """Workers killed mid-epoch: the pool replaces them, but a batch a dead worker held never comes,
    and Keras would wait for it forever. They are killed for a few seconds, so one surely held one."""
    # Far above an honest step here, the first of an epoch included (its pool of processes starts,
    # each importing TensorFlow): 8 s fired in epoch 1 on a busy machine, before any kill.
    job = TrainProcess(tmp_path, tiny_root, *PROCESSES, f"trainer.stall_timeout_s={STALL_S}")
    try:
        job.wait_for("Epoch 2/")

        def kill_workers_for_a_while(seconds: float = 5.0) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end and job.proc.poll() is None:
                for worker in job.workers():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        worker.kill()
                time.sleep(0.1)

        seconds = job.stop_and_time(kill_workers_for_a_while, timeout_s=180)
        assert job.proc.returncode != 0
        job.assert_session_ends()  # the pool's replacement workers too
    finally:
        job.kill()
    print(f"\nSTOP killed-workers+watchdog({STALL_S}s) loader=sequence-processes exit_s={seconds:.2f} left=0")
    run = job.run()
    assert run.info.status == "FAILED"
    assert "data worker process may have died" in run.data.tags["error"]
