"""The MLflow store under concurrency, and config flattening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from loaderlab.tracking import flatten

JOB = """
import sys, mlflow
from loaderlab.tracking import connect
experiment_id = connect(sys.argv[1], "race", sys.argv[2])
with mlflow.start_run(experiment_id=experiment_id):
    mlflow.log_params({f"p{i}": i for i in range(50)})
    for step in range(20):
        mlflow.log_metrics({"loss": 1 / (step + 1)}, step=step)
"""


def test_parallel_jobs_share_a_new_sqlite_store(tmp_path: Path) -> None:
    """Six jobs start at once on a store that does not exist yet: no lock or migration race."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, uri, str(tmp_path / "artifacts")], stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    errors = [job.communicate(timeout=180)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 6, "\n".join(errors)[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 20 for r in runs)


def test_flatten_gives_dotted_resolved_keys() -> None:
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": "${a.b}", "e": None})
    assert flatten(cfg) == {"a.b": "1", "a.c": "[1, 2]", "d": "1", "e": "None"}


def test_a_registration_delivered_twice_makes_one_model_version(tmp_path: Path) -> None:
    """A retry after a lost reply sends the record again: the model is not registered twice."""
    from loaderlab.run_log import deliver_record

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("register", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "a model", "model/MLmodel")
    for _ in range(2):
        deliver_record(client, run_id, {"register": "twice", "artifact_path": "model"})
    assert [int(v.version) for v in client.search_model_versions("name = 'twice'")] == [1]
