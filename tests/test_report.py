"""python src/compare.py and loaderlab.report on a small MLflow store built by hand (no training)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from loaderlab import PROJECT_ROOT
from loaderlab.report import NA, ReportError, build_table, find_sweep, make_report, open_store, varied_params

LOADERS = ("inmemory", "generator", "sequence", "tfdata")
TARGETS = {
    "inmemory": "loaderlab.loaders.inmemory.InMemoryLoader",
    "generator": "loaderlab.loaders.generator.GeneratorLoader",
    "sequence": "loaderlab.loaders.sequence.SequenceLoader",
    "tfdata": "loaderlab.loaders.tfdata.TFDataLoader",
}
_clock = itertools.count(1_790_000_000_000, 60_000)  # run start times, one minute apart


def load_compare():
    """src/compare.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("compare", PROJECT_ROOT / "src" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient]:
    """One SQLite store for the module (creating one costs a schema migration); one experiment per test."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(uri)


@pytest.fixture
def experiment(store, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh experiment named after the test, with its artifacts under tmp_path."""
    _, client = store
    name = request.node.name
    client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    return name


def add_sweep(client: MlflowClient, experiment: str, sweep_id: str, jobs: list[dict]) -> str:
    """A parent run with role=sweep and one child run per job, as MlflowSweepCallback and train() log them."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep {sweep_id}",
        start_time=next(_clock),
        tags={"role": "sweep", "sweep_id": sweep_id, "sweep_dir": f"/tmp/multiruns/{sweep_id}"},
    )
    parent_id = parent.info.run_id
    for number, job in enumerate(jobs):
        loader, num_images = job.get("loader", "tfdata"), job.get("num_images", 400)
        overrides = job.get("overrides", f"loader={loader} data.num_images={num_images}")
        tags = {
            "mlflow.parentRunId": parent_id,
            "sweep_id": sweep_id,
            "loader": loader,
            "model": "small_cnn",
            "dataset": "synthetic",
            "device": "CPU",
            "process_isolated": "true",
            **({"hydra_overrides": overrides} if overrides is not None else {}),
            **({"error": job["error"]} if "error" in job else {}),
        }
        run = client.create_run(
            experiment_id, run_name=f"{loader}-small_cnn", start_time=next(_clock), tags=tags
        )
        params = {
            "batch.train": "64",
            "batch.val": "128",
            "data.num_images": str(num_images),
            "data.image_size": "48",
            "data.channels": "3",
            "data.root": f"/tmp/datasets/synthetic-n{num_images}-px48-c4-s0",
            "model.name": "small_cnn",
            "model.input_size": str(job.get("input_size", 32)),
            "trainer.epochs": str(job.get("epochs", 3)),
            "trainer.learning_rate": job.get("lr", "0.0003"),
            "loader._target_": TARGETS[loader],
            "paths.output_dir": f"/tmp/multiruns/{sweep_id}/{number}",
            **({"loader.workers": "2"} if loader == "sequence" else {}),
        }
        metrics = [Metric(k, v, 0, 0) for k, v in job.get("metrics", {}).items()]
        metrics += [Metric("val_loss", v, 0, step) for step, v in enumerate(job.get("val_loss", []))]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id, job.get("status", "FINISHED"))
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


def finished(loader: str, peak: float, rate: float, **extra) -> dict:
    """A finished job with the summary metrics and three epochs of val_loss."""
    metrics = {
        "peak_rss_mb": peak,
        "baseline_rss_mb": 800.0,
        "images_per_sec": rate,
        "time_to_first_batch_s": 1.5,
        "best_val_loss": 1.25,
    }
    return {"loader": loader, "metrics": metrics, "val_loss": [1.4, 1.3, 1.25], **extra}


def loader_sweep(gpu_for: str | None = None) -> list[dict]:
    """The four loaders on the same data; one job may have a GPU figure."""
    jobs = [finished(name, 900.0 + 10 * i, 500.0 + 100 * i) for i, name in enumerate(LOADERS)]
    for job in jobs:
        if job["loader"] == gpu_for:
            job["metrics"]["gpu_peak_mb"] = 123.4
    return jobs


def scaling_sweep() -> list[dict]:
    """The memory_scaling preset's shape: loaders x data.num_images, in-memory failing on the largest."""
    jobs = []
    for n in (2000, 8000, 32000):
        for name in LOADERS:
            overrides = f"experiment=memory_scaling data.num_images={n} loader={name}"
            if name == "inmemory" and n == 32000:
                error = "InsufficientMemoryError: loader=inmemory needs 4,594 MB"
                failed = {"loader": name, "num_images": n, "overrides": overrides, "status": "FAILED"}
                jobs.append({**failed, "error": error, "input_size": 224, "epochs": 1})
                continue
            peak = 800 + (n * 150_528 / 2**20 if name == "inmemory" else 60)
            rate = 900.0 if name == "inmemory" else 500.0 + 100 * LOADERS.index(name)
            job = finished(name, peak, rate, num_images=n, overrides=overrides, val_loss=[1.3])
            job.update(input_size=224, epochs=1)
            jobs.append(job)
    return jobs


def test_table_has_one_row_per_job_and_na_where_no_gpu(store, experiment: str) -> None:
    uri, client = store
    add_sweep(client, experiment, "2026-01-01_10-00-00", loader_sweep(gpu_for="tfdata"))
    table = build_table(find_sweep(client, experiment))
    assert table.headers == [
        "loader", "model", "batch", "status", "peak_rss_mb", "baseline_rss_mb",
        "gpu_peak_mb", "images_per_sec", "time_to_first_batch_s", "best_val_loss",
    ]  # fmt: skip
    assert table.column("loader") == list(LOADERS)
    assert table.column("gpu_peak_mb") == [NA, NA, NA, "123.4"]  # never 0 where no GPU was
    assert table.column("peak_rss_mb") == ["900.0", "910.0", "920.0", "930.0"]
    assert set(table.column("batch")) == {"64/128"} and set(table.column("status")) == {"FINISHED"}
    text = table.render()
    assert len(text.splitlines()) == 2 + len(LOADERS) and "tfdata" in text.splitlines()[-1]


def test_test_accuracy_is_a_column_where_the_sweep_has_it(store, experiment: str) -> None:
    _, client = store
    jobs = loader_sweep()
    for i, job in enumerate(jobs[:2]):
        job["metrics"]["test_accuracy"] = 0.5 + 0.1 * i
    add_sweep(client, experiment, "2026-01-02_10-00-00", jobs)
    table = build_table(find_sweep(client, experiment, "2026-01-02_10-00-00"))
    assert table.headers[-1] == "test_accuracy"
    assert table.column("test_accuracy") == ["0.5000", "0.6000", NA, NA]


def test_varied_params_are_the_swept_ones_not_their_consequences(store, experiment: str) -> None:
    _, client = store
    add_sweep(client, experiment, "2026-01-01_11-00-00", scaling_sweep())
    sweep = find_sweep(client, experiment)
    # loader.* follows from the loader, data.root from data.num_images, paths.output_dir is per job.
    assert varied_params(sweep.jobs) == ["data.num_images"]
    table = build_table(sweep)
    assert table.headers[:4] == ["loader", "model", "data.num_images", "batch"]
    assert table.column("data.num_images")[:5] == ["2000"] * 4 + ["8000"]


def test_varied_params_without_override_tags(store, experiment: str) -> None:
    _, client = store
    jobs = [finished("tfdata", 900, 500, lr=lr, overrides=None) for lr in ("0.001", "0.0003")]
    add_sweep(client, experiment, "2026-01-01_12-00-00", jobs)
    assert varied_params(find_sweep(client, experiment).jobs) == ["trainer.learning_rate"]


def test_latest_sweep_by_default_or_the_named_one(store, experiment: str) -> None:
    _, client = store
    old = add_sweep(client, experiment, "2026-01-01_09-00-00", [finished("generator", 900, 500)])
    new = add_sweep(client, experiment, "2026-01-02_09-00-00", loader_sweep())
    assert find_sweep(client, experiment).parent.info.run_id == new
    named = find_sweep(client, experiment, "2026-01-01_09-00-00")
    assert named.parent.info.run_id == old and len(named.jobs) == 1
    with pytest.raises(ReportError, match="No sweep 'nope'.*Recent sweeps: 2026-01-02_09-00-00, 2026-01-01"):
        find_sweep(client, experiment, "nope")


def test_failed_job_shows_status_na_and_its_error(store, experiment: str, tmp_path: Path) -> None:
    uri, client = store
    jobs = [
        finished("tfdata", 900, 500),
        {"loader": "inmemory", "status": "FAILED", "error": "Boom: too big"},
    ]
    add_sweep(client, experiment, "2026-01-01_13-00-00", jobs)
    report = make_report(uri, experiment, out=tmp_path / "reports")
    assert report.table.column("status") == ["FINISHED", "FAILED"]
    assert report.table.column("peak_rss_mb")[1] == NA
    assert len(report.errors) == 1 and "FAILED: Boom: too big" in report.errors[0]


@pytest.mark.parametrize("jobs", [loader_sweep, scaling_sweep], ids=["loaders", "scaling"])
def test_chart_is_written_and_logged_on_the_parent(store, experiment: str, tmp_path: Path, jobs) -> None:
    uri, client = store
    parent = add_sweep(client, experiment, "2026-01-01_14-00-00", jobs())
    report = make_report(uri, experiment, out=tmp_path / "reports")
    assert report.chart == tmp_path / "reports" / "2026-01-01_14-00-00.png"
    assert report.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.chart.stat().st_size > 20_000
    logged = [a.path for a in client.list_artifacts(parent, "reports")]
    assert logged == ["reports/2026-01-01_14-00-00.png"] == [report.artifact_path]


def test_cli_prints_the_table_and_the_chart(store, experiment: str, tmp_path: Path, capsys) -> None:
    uri, client = store
    add_sweep(client, experiment, "2026-01-01_15-00-00", loader_sweep())
    args = ["--tracking-uri", uri, "--experiment", experiment, "--out", str(tmp_path)]
    assert load_compare().main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Sweep 2026-01-01_15-00-00: 4 job(s)")
    assert "peak_rss_mb" in out and "sequence" in out and f"Chart: {tmp_path}" in out


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_store", "No MLflow store at"),
        ("no_experiment", "No experiment 'missing'"),
        ("no_sweep", "No sweep in experiment"),
        ("unknown_id", "No sweep '1999-01-01_00-00-00'"),
    ],
)
def test_cli_says_what_is_missing(store, experiment: str, tmp_path: Path, capsys, case: str, message: str):
    uri, _ = store
    absent = tmp_path / "nowhere" / "mlflow.db"
    args = {
        "no_store": ["--tracking-uri", f"sqlite:///{absent}"],
        "no_experiment": ["--tracking-uri", uri, "--experiment", "missing"],
        "no_sweep": ["--tracking-uri", uri, "--experiment", experiment],
        "unknown_id": ["1999-01-01_00-00-00", "--tracking-uri", uri, "--experiment", experiment],
    }[case]
    assert load_compare().main([*args, "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"compare: {message}") and "Traceback" not in captured.err
    assert not absent.exists()  # reading must not create a store


def test_open_store_does_not_create_a_sqlite_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="Run a sweep first"):
        open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()


def test_memory_scaling_preset_sweeps_sizes_and_loaders() -> None:
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=memory_scaling"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params == {
        "data.num_images": "2000,8000,32000",
        "loader": "inmemory,generator,sequence,tfdata,packed",
    }
    assert (cfg.data.image_size, cfg.model.input_size, cfg.trainer.epochs) == (256, 224, 1)


def test_mlflow_ui_view_is_saved_on_the_experiment(store, experiment: str, tmp_path: Path) -> None:
    uri, client = store
    add_sweep(client, experiment, "2026-01-01_16-00-00", scaling_sweep())
    report = make_report(uri, experiment, out=tmp_path)
    assert report.ui_view == "loaderlab-2026-01-01_16-00-00"
    tags = client.get_experiment_by_name(experiment).tags
    state = json.loads(tags[f"mlflow.sharedViewState.{report.ui_view}"])
    assert state["searchFilter"] == "tags.sweep_id = '2026-01-01_16-00-00'"
    assert state["selectedColumns"][:2] == ["tags.`loader`", "params.`data.num_images`"]
    assert "metrics.`peak_rss_mb`" in state["selectedColumns"]
    assert "metrics.`gpu_peak_mb`" not in state["selectedColumns"]  # no job had a GPU
    assert [c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "BAR"][:2] == [
        "peak_rss_mb",
        "images_per_sec",
    ]
    text = report.render(uri)
    assert f"#/experiments/{report.sweep.experiment_id}/runs?" in text
    assert f"viewStateShareKey={report.ui_view}&compareRunsMode=CHART" in text
    assert f"mlflow ui --backend-store-uri {uri}" in text


def test_other_mlflow_versions_get_a_filtered_runs_link_not_a_saved_view(
    store, experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, client = store
    add_sweep(client, experiment, "2026-01-01_17-00-00", loader_sweep())
    monkeypatch.setattr("loaderlab.report.ui_view.view_supported", lambda: False)
    report = make_report(uri, experiment, out=tmp_path)
    assert report.ui_view is None
    tags = client.get_experiment_by_name(experiment).tags
    assert not any(k.startswith("mlflow.sharedViewState.") for k in tags)
    assert "searchFilter=tags.sweep_id%20%3D%20%272026-01-01_17-00-00%27" in report.render(uri)
    colours = {r.data.tags["loader"]: r.data.tags["mlflow.runColor"] for r in report_runs(client, report)}
    assert len(set(colours.values())) == len(LOADERS)  # the public run-colour tag is still set


def report_runs(client: MlflowClient, report) -> list:
    return [client.get_run(run_id) for run_id in report.sweep.jobs["run_id"]]


def test_a_new_loader_yaml_gets_its_own_row_and_colour(store, experiment: str, tmp_path: Path) -> None:
    from loaderlab.report.chart import loader_colours

    conf = tmp_path / "conf"
    (conf / "loader").mkdir(parents=True)
    for name in (*LOADERS, "mine"):
        (conf / "loader" / f"{name}.yaml").write_text("_target_: x\n")
    colours = loader_colours(["mine", "tfdata"], conf_dir=conf)
    assert len(set(colours.values())) == len(colours) == len(LOADERS) + 1
    uri, client = store
    TARGETS["mine"] = "my.loaders.Mine"
    try:
        add_sweep(
            client, experiment, "2026-01-01_18-00-00", [finished("mine", 900, 500), finished("tfdata", 9, 5)]
        )
    finally:
        del TARGETS["mine"]
    report = make_report(uri, experiment, out=tmp_path)
    assert report.table.column("loader") == ["mine", "tfdata"]
