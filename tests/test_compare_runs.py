"""python src/compare.py --last N / --all: runs that no sweep groups, on a real SQLite store made here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from loaderlab.report import ReportError, Runs, find_runs, make_report
from test_report import _clock, add_sweep, finished, load_compare, loader_sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient]:
    """One SQLite store for the module; one experiment per test."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, MlflowClient(uri)


@pytest.fixture
def experiment(store, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    _, client = store
    client.create_experiment(request.node.name, artifact_location=(tmp_path / "artifacts").as_uri())
    return request.node.name


def add_run(client: MlflowClient, experiment: str, loader: str, rate: float, **tags: str) -> str:
    """One training run as `python src/train.py loader=<loader>` logs it, outside any sweep."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {"loader": loader, "model": "small_cnn", "dataset": "synthetic", "sweep_id": "none", **tags}
    run = client.create_run(experiment_id, run_name=f"{loader}-small_cnn", start_time=next(_clock), tags=tags)
    metrics = {"peak_rss_mb": 900.0, "baseline_rss_mb": 800.0, "images_per_sec": rate, "best_val_loss": 0.5}
    params = {"batch.train": "64", "batch.val": "128", "data.num_images": "400", "trainer.epochs": "3"}
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def all_artifacts(client: MlflowClient, experiment: str) -> list[str]:
    """Every artifact of every run of the experiment."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [a.path for r in client.search_runs([experiment_id]) for a in client.list_artifacts(r.info.run_id)]


def test_last_n_are_the_newest_training_runs_oldest_first(store, experiment: str, tmp_path: Path) -> None:
    uri, client = store
    old = add_run(client, experiment, "inmemory", 100.0)
    add_sweep(client, experiment, "2026-02-01_10-00-00", loader_sweep()[:2])  # a parent and two jobs
    mid = add_run(client, experiment, "generator", 200.0)
    add_run(client, experiment, "tfdata", 1.0, role="evaluation")  # eval.py's: no training job
    new = add_run(client, experiment, "tfdata", 300.0)
    runs = find_runs(client, experiment, last=3)
    assert isinstance(runs, Runs) and runs.parent is None
    ids = runs.jobs["run_id"].tolist()
    assert len(ids) == 3 and ids[1:] == [mid, new] and old not in ids  # the sweep's second job, then these
    assert runs.jobs["tags.loader"].tolist() == ["generator", "generator", "tfdata"]
    everything = find_runs(client, experiment)
    assert everything.jobs["run_id"].tolist()[0] == old and len(everything.jobs) == 5  # no parent, no eval


def test_cli_last_n_writes_the_chart_to_out_only_and_says_so(
    store, experiment: str, tmp_path: Path, capsys
) -> None:
    uri, client = store
    ids = [
        add_run(client, experiment, name, 100.0 * (i + 1)) for i, name in enumerate(["generator", "tfdata"])
    ]
    args = ["--last", "5", "--tracking-uri", uri, "--experiment", experiment, "--out", str(tmp_path / "r")]
    assert load_compare().main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Last 2 run(s) of experiment '{experiment}' (5 asked), store {uri}")
    chart = tmp_path / "r" / f"{experiment}-last5.png"
    assert f"Chart: {chart}" in out and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not logged to MLflow" in out and all_artifacts(client, experiment) == []
    assert "attributes.run_id%20IN%20%28" in out and all(i in out for i in ids)  # the UI filtered to them
    assert ids[0][:8] in out.splitlines()[4]  # the run column: first row is the oldest


def test_cli_all_runs_of_an_experiment(store, experiment: str, tmp_path: Path, capsys) -> None:
    uri, client = store
    for name in ("inmemory", "generator", "sequence"):
        add_run(client, experiment, name, 100.0)
    add_run(client, experiment, "sequence", 100.0)  # alike in all but their run id
    args = ["--all", "--tracking-uri", uri, "--experiment", experiment, "--out", str(tmp_path)]
    assert load_compare().main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"All 4 run(s) of experiment '{experiment}', store")
    assert (tmp_path / f"{experiment}-all.png").exists() and all_artifacts(client, experiment) == []


def test_a_sweep_report_is_unchanged_by_the_new_modes(store, experiment: str, tmp_path: Path) -> None:
    uri, client = store
    parent = add_sweep(client, experiment, "2026-02-02_10-00-00", [finished("tfdata", 900, 500)])
    add_run(client, experiment, "generator", 100.0)  # newer, outside the sweep
    report = make_report(uri, experiment, out=tmp_path)
    assert (
        report.sweep.parent.info.run_id == parent
        and report.artifact_path == "reports/2026-02-02_10-00-00.png"
    )
    assert "Logged on the parent run" in report.render(uri)


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("zero", 2, "--last takes how many .* Received: last=0$"),
        (
            "both",
            2,
            "Compare a sweep, or runs .* Received: sweep_id='2026-01-01_00-00-00', last=3, all=False$",
        ),
        (
            "empty",
            1,
            "No training runs in experiment '.*': nothing to compare. .* Received: experiment=.*, last=3$",
        ),
        ("parent_only", 1, "No training runs in experiment .* Received: experiment=.*, last=None$"),
        ("no_experiment", 1, "No experiment 'missing' .* Received: experiment='missing'$"),
    ],
)
def test_cli_says_why_there_is_nothing_to_compare(
    store, experiment: str, tmp_path: Path, capsys, case: str, code: int, message: str
) -> None:
    uri, client = store
    if case == "parent_only":  # a sweep that logged no job yet: its parent is no training run
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        client.create_run(experiment_id, tags={"role": "sweep", "sweep_id": "x"})
    args = {
        "zero": ["--last", "0"],
        "both": ["2026-01-01_00-00-00", "--last", "3"],
        "empty": ["--last", "3"],
        "parent_only": ["--all"],
        "no_experiment": ["--all", "--experiment", "missing"],
    }[case]
    base = ["--tracking-uri", uri, "--out", str(tmp_path)] + (
        [] if "--experiment" in args else ["--experiment", experiment]
    )
    assert load_compare().main([*args, *base]) == code
    err = capsys.readouterr().err
    assert err.startswith("compare: ") and "Traceback" not in err
    assert re.search(message, err.strip()), err
    assert not list(tmp_path.glob("*.png"))


def test_find_runs_names_the_experiments_there(store, tmp_path: Path) -> None:
    _, client = store
    with pytest.raises(ReportError, match="experiments there: .*Received: experiment='nope'"):
        find_runs(client, "nope", last=2)
