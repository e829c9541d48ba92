"""Sweeps under a real Slurm (tests/slurm_cluster.py: slurmctld, slurmd and munge on this machine):
`hydra/launcher=slurm` submits through sbatch, every job's run lands under one parent, parallel jobs
say so, a failed or stopped job is named, and a stopped job resumes its run."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import PROJECT_ROOT, train_command
from mlflow_server import Server
from slurm_cluster import SlurmCluster, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=30",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One node offering 4 CPUs (more than this machine has: jobs share its cores, as the tag says)."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=4) as started:
        yield started


def multirun(
    outputs: Path, tiny_root: Path, *overrides: str, env: dict | None = None, timeout_s: float = 600
):
    """`python src/train.py -m ...` on the tiny dataset, started; with finish() its exit code and output."""
    command = train_command(outputs, tiny_root, *overrides)
    command.insert(2, "-m")
    outputs.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=outputs
    )
    return process, timeout_s


def sweep(cluster: SlurmCluster, outputs: Path, tiny_root: Path, *overrides: str):
    """A sweep with the Slurm launcher, as a user runs it, against this cluster."""
    return multirun(outputs, tiny_root, *SLURM, *overrides, env=cluster.env)


def finish(started) -> tuple[int, str]:
    process, timeout_s = started
    out, _ = process.communicate(timeout=timeout_s)
    return process.returncode, out


def runs_of(uri: str, experiment: str) -> tuple[MlflowClient, object, list]:
    """The sweep's parent run and its jobs' runs."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def no_job_process_left() -> bool:
    return not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "submitit.core._submit" in " ".join(p.info["cmdline"] or [])
    ]


def test_a_sweep_runs_its_jobs_through_sbatch_in_parallel_under_one_parent(
    cluster: SlurmCluster, server: Server, tmp_path: Path, tiny_root: Path
) -> None:
    experiment = "slurm-sweep"
    started = time.time()
    code, out = finish(
        sweep(
            cluster, tmp_path, tiny_root, f"tracking.uri={server.uri}", f"tracking.experiment={experiment}",
            "trainer.epochs=2", "hydra.launcher.array_parallelism=4",
            "loader=tfdata,packed,sequence,generator",
        )
    )  # fmt: skip
    assert code == 0, out[-4000:]
    assert "Bypassing sacct error" not in out  # no accounting here: states came from squeue
    client, parent, jobs = runs_of(server.uri, experiment)
    assert parent.info.status == "FINISHED" and "failed_jobs" not in parent.data.tags
    assert sorted(r.data.tags["loader"] for r in jobs) == ["generator", "packed", "sequence", "tfdata"]
    together = [int(r.data.tags["parallel_jobs"]) for r in jobs]
    for run in jobs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
        assert {"peak_rss_mb", "images_per_sec", "best_val_loss"} <= set(run.data.metrics)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"train.log", ".hydra"}
    assert max(together) >= 2  # they shared the node, and each run says with how many
    submitted = datetime.strptime(
        re.search(r"\[([\d\- :,]+)\]\[HYDRA\] Submitting", out)[1], "%Y-%m-%d %H:%M:%S,%f"
    )
    starts = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
        for log in (tmp_path / "multiruns").rglob("*_log.out")
        for m in re.findall(r"submitit INFO \(([\d\- :,]+)\) - Starting with", log.read_text())
    ]
    print(
        f"\nSLURM-SWEEP 4 jobs: first running {(min(starts) - submitted).total_seconds():.1f} s after "
        f"submission, all ended {time.time() - started:.0f} s after the command started; "
        f"parallel_jobs {together}"
    )
    report = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "compare.py"), "--tracking-uri", server.uri,
         "--experiment", experiment, "--out", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "jobs at once" in report.stdout and parent.data.tags["sweep_id"] in report.stdout
    assert no_job_process_left()

    # The same jobs under the isolated launcher log the same params, metrics and tags.
    twin_overrides = [f"tracking.uri={server.uri}", "tracking.experiment=isolated-twin", "trainer.epochs=2"]
    code, out = finish(multirun(tmp_path / "isolated", tiny_root, *twin_overrides, "loader=tfdata"))
    assert code == 0, out[-3000:]
    _, _, twins = runs_of(server.uri, "isolated-twin")
    slurm_run = next(r for r in jobs if r.data.tags["loader"] == "tfdata")
    twin = next(r for r in twins if r.data.tags["loader"] == "tfdata")
    assert set(slurm_run.data.params) == set(twin.data.params)
    assert set(slurm_run.data.metrics) == set(twin.data.metrics)
    ours = {k for k in slurm_run.data.tags if not k.startswith("mlflow.source.")}  # MLflow's, by entry point
    assert ours == {k for k in twin.data.tags if not k.startswith("mlflow.source.")}
    assert twin.data.tags["parallel_jobs"] == "1"


def test_a_failed_job_fails_the_parent_naming_it_and_sqlite_is_refused_for_parallel_jobs(
    cluster: SlurmCluster, server: Server, tmp_path: Path, tiny_root: Path
) -> None:
    experiment = "slurm-failed"
    code, out = finish(
        sweep(
            cluster, tmp_path, tiny_root, f"tracking.uri={server.uri}", f"tracking.experiment={experiment}",
            "trainer.epochs=1", "hydra.launcher.array_parallelism=2", "data.on_bad_image=error,sometimes",
        )
    )  # fmt: skip
    assert code != 0 and "data.on_bad_image" in out
    _, parent, jobs = runs_of(server.uri, experiment)
    failed = next(r for r in jobs if r.info.status == "FAILED")
    assert sorted(r.info.status for r in jobs) == ["FAILED", "FINISHED"]
    assert (
        parent.info.status == "FAILED"
        and failed.data.tags["mlflow.runName"] in parent.data.tags["failed_jobs"]
    )

    code, out = finish(
        sweep(
            cluster,
            tmp_path / "sqlite",
            tiny_root,
            "hydra.launcher.array_parallelism=2",
            "loader=tfdata,sequence",
        )
    )
    assert code != 0 and "is one SQLite file" in out and "mlflow server" in out
    assert cluster.jobs() == []  # refused before anything was submitted


@pytest.mark.parametrize(
    "scancel",
    [["--signal=USR2"], ["--signal=TERM", "--full"]],
    ids=["usr2", "term-full"],
)
def test_a_job_slurm_stops_ends_killed_and_resumes_its_run(
    cluster: SlurmCluster, server: Server, tmp_path: Path, tiny_root: Path, scancel: list[str]
) -> None:
    """USR2 (what Slurm sends before a time limit or preemption; TERM to the step takes the same handler,
    tested locally in test_faults.py) ends the run KILLED by itself; `scancel --full` makes srun kill
    the step at once, and the sweep ends the run. Resuming is tested once, after the harder stop."""
    experiment = "slurm-stop-" + "-".join(s.strip("-").replace("=", "-") for s in scancel)
    started = sweep(
        cluster, tmp_path, tiny_root, f"tracking.uri={server.uri}", f"tracking.experiment={experiment}",
        "trainer.epochs=400", "~callbacks.early_stopping", "loader=tfdata",
    )  # fmt: skip
    job_log = None
    deadline = time.monotonic() + 300
    while job_log is None or "Epoch 3/" not in job_log.read_text():
        if started[0].poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the job did not reach epoch 3: {finish(started)[1][-3000:]}")
        job_log = (
            next((tmp_path / "multiruns").rglob("*_0_log.out"), None)
            if (tmp_path / "multiruns").exists()
            else None
        )
        time.sleep(0.5)
    [line] = cluster.jobs()
    cluster.run("scancel", *scancel, line.split()[0])
    code, out = finish(started)
    assert code != 0 and "Slurm job" in out
    client, parent, [run] = runs_of(server.uri, experiment)
    assert run.info.status == "KILLED", run.data.tags.get("error")
    assert (
        parent.info.status == "KILLED" and run.data.tags["mlflow.runName"] in parent.data.tags["failed_jobs"]
    )
    assert no_job_process_left() and cluster.jobs() == []
    epochs_before = len(client.get_metric_history(run.info.run_id, "val_loss"))
    if "--full" not in scancel:
        return

    folder = next(p.parent for p in (tmp_path / "multiruns").rglob("mlflow_run_id"))
    code, out = finish(
        sweep(
            cluster, tmp_path / "again", tiny_root, f"tracking.uri={server.uri}",
            f"tracking.experiment={experiment}", f"trainer.resume={folder}",
            f"trainer.epochs={epochs_before + 2}", "loader=tfdata",
        )
    )  # fmt: skip
    assert code == 0, out[-3000:]
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"  # the same run, continued
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps[-1] == epochs_before + 1 and len(set(steps)) == epochs_before + 2
