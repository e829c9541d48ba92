"""The real command line, as a user runs it: single runs and sweeps in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import train_command

pytestmark = pytest.mark.slow


def run_train(tmp_path: Path, tiny_root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """python src/train.py on the tiny dataset with every output under tmp_path."""
    flags = [a for a in args if a.startswith("-")]  # argparse wants flags before overrides
    command = train_command(tmp_path, tiny_root, "trainer.epochs=1", *(a for a in args if a not in flags))
    command[2:2] = flags
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("loaderlab")
    return client, client.search_runs([experiment.experiment_id])


def test_train_py_runs_end_to_end(tmp_path: Path, tiny_root: Path) -> None:
    result = run_train(tmp_path, tiny_root)
    assert result.returncode == 0, result.stderr[-3000:]
    client, [run] = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["loader"] == "tfdata" and run.data.tags["process_isolated"] == "true"
    assert "model.input_size=32" in run.data.tags["hydra_overrides"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {".hydra", "train.log", "checkpoints"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/config.yaml" in hydra_files and ".hydra/overrides.yaml" in hydra_files
    # It ends saying where the run is: its id and folder, its page in the UI, and how to serve that UI.
    console = result.stdout + result.stderr
    assert f"MLflow run {run.info.run_id}, run folder " in console
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in console
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in console
    # TensorFlow's C++ start-up banner is held back (LOADERLAB_TF_STARTUP_LOG=1 shows it), and so is
    # MLflow's advice to type-hint predict, whose input the logged signature describes.
    for banner in ("oneDNN custom operations", "cpu_feature_guard", "cuInit", "Add type hints"):
        assert banner not in console, banner


def test_sweep_isolates_jobs_under_one_parent_and_survives_a_failure(tmp_path: Path, tiny_root: Path) -> None:
    # Job 0 fails on a bad value; job 1 must still run, in its own process.
    result = run_train(tmp_path, tiny_root, "-m", "loader=generator", "batch.train=0,16")
    assert result.returncode != 0  # Hydra reports the failed job at the end
    assert "batch.train must be a positive integer" in result.stderr + result.stdout
    client, all_runs = runs(tmp_path)
    [parent] = [r for r in all_runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(all_runs) == 3 and len(children) == 2
    by_batch = {r.data.params["batch.train"]: r for r in children}
    assert by_batch["0"].info.status == "FAILED" and "batch.train" in by_batch["0"].data.tags["error"]
    assert by_batch["16"].info.status == "FINISHED" and "images_per_sec" in by_batch["16"].data.metrics
    assert {r.data.tags["process_isolated"] for r in children} == {"true"}
    assert {r.data.tags["sweep_id"] for r in children} == {parent.data.tags["sweep_id"]}
    assert parent.info.status == "FAILED"
    # Run names tell the jobs apart by what the sweep varies, a failed job's too.
    assert {r.info.run_name for r in children} == {
        "generator-small_cnn batch.train=0",
        "generator-small_cnn batch.train=16",
    }


@pytest.mark.parametrize("script", ["train", "eval"])
def test_a_config_error_prints_one_message_exits_2_and_opens_no_run(tmp_path: Path, script: str) -> None:
    """`python src/train.py data=folder` (no data.root) and `python src/eval.py` (no run named): the
    message alone, no traceback, exit code 2, and no MLflow run; HYDRA_FULL_ERROR=1 shows everything."""
    from loaderlab import PROJECT_ROOT

    command = [
        sys.executable, str(PROJECT_ROOT / "src" / f"{script}.py"), f"paths.outputs={tmp_path}",
        *(["data=folder"] if script == "train" else []),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    expected = "data.root must be set" if script == "train" else "Name the run to evaluate"
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Received:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    store = tmp_path / "mlflow.db"
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    if script == "train":  # one script is enough to show the variable
        env["HYDRA_FULL_ERROR"] = "1"
        full = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert full.returncode != 0 and "Traceback" in full.stderr and expected in full.stderr
