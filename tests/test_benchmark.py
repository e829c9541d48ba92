"""The loader benchmark: every entry measured in its own process, ratios to the limit, one MLflow run each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from loaderlab import PROJECT_ROOT
from loaderlab.benchmark import (
    DECODE_LIMIT,
    EXPERIMENT,
    KERAS_FROM_DIRECTORY,
    BenchmarkConfig,
    EntryFailedError,
    EntryResult,
    default_entries,
    format_table,
    merge_limits,
    parse_args,
    run_benchmark,
)

TINY = {"num_images": 64, "image_size": 32, "input_size": 32, "batch_size": 16, "passes": 1}


def runs_of(tracking_uri: str, benchmark_id: str) -> dict[str, object]:
    """The invocation's MLflow runs, by entry."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.benchmark_id = '{benchmark_id}'")
    by_entry = {run.data.tags["entry"]: run for run in runs}
    assert len(by_entry) == len(runs), "one run per entry"
    return by_entry


def config(tmp_path: Path, tracking_uri: str, **overrides) -> BenchmarkConfig:
    """A tiny invocation with every output under tmp_path."""
    return BenchmarkConfig(
        **{**TINY, **overrides},
        root=str(tmp_path / "data"),
        tracking_uri=tracking_uri,
        artifact_location=str(tmp_path / "artifacts"),
        out=str(tmp_path / "results.json"),
        progress=False,
    )


def test_every_entry_runs_in_its_own_process_and_is_logged(tmp_path: Path, tracking_uri: str) -> None:
    """The real thing, tiny: all default entries, a positive rate each, ratios to the same limit."""
    report = run_benchmark(config(tmp_path, tracking_uri))
    benchmark_id, results, table = report.benchmark_id, report.results, report.table

    assert [r.entry for r in results] == default_entries()
    by_entry = {r.entry: r for r in results}
    limit = by_entry[DECODE_LIMIT].images_per_sec
    assert len(by_entry[DECODE_LIMIT].pass_images_per_sec) == 2  # measured first and last
    for r in results:
        assert r.images_per_sec > 0 and r.images_per_pass == TINY["num_images"], r.entry
        assert r.peak_rss_mb >= r.baseline_rss_mb > 0, r.entry
        assert r.entry in table
    assert by_entry[KERAS_FROM_DIRECTORY].peak_rss_mb > by_entry[DECODE_LIMIT].peak_rss_mb  # TF is loaded

    report = json.loads((tmp_path / "results.json").read_text())
    assert report["benchmark_id"] == benchmark_id and report["decode_limit"] == pytest.approx(limit)
    for row in report["results"]:
        assert row["ratio_to_limit"] == pytest.approx(row["images_per_sec"] / limit)

    runs = runs_of(tracking_uri, benchmark_id)
    assert set(runs) == set(default_entries())
    for entry, run in runs.items():
        metrics, params = run.data.metrics, run.data.params
        assert run.info.status == "FINISHED"
        assert metrics["images_per_sec"] == pytest.approx(by_entry[entry].images_per_sec)
        assert metrics["ratio_to_limit"] == pytest.approx(metrics["images_per_sec"] / limit)
        assert metrics["peak_rss_mb"] > 0
        assert params["num_images"] == "64" and params["batch_size"] == "16" and params["input_size"] == "32"
        assert int(params["cores"]) >= 1
    assert runs[DECODE_LIMIT].data.metrics["ratio_to_limit"] == pytest.approx(1.0)
    assert runs[DECODE_LIMIT].data.metrics["one_core_images_per_sec"] == pytest.approx(
        limit / int(runs[DECODE_LIMIT].data.params["cores"])
    )
    assert runs["sequence"].data.params["loader.workers"] == runs["sequence"].data.params["cores"]


def fake_result(entry: str, rate: float) -> EntryResult:
    extra = {"one_core_images_per_sec": rate / 2} if entry == DECODE_LIMIT else {}
    return EntryResult(entry, rate, [rate], 64, 100.0, 90.0, "pss_sum", {}, extra)


def test_a_failed_entry_is_recorded_and_the_others_still_logged(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No subprocesses: run_child is faked, so this checks the orchestration alone."""
    limits = iter([1000.0, 3000.0])  # first and last measurement of the limit

    def fake_child(entry: str, cfg, root, cores) -> EntryResult:
        if entry == "sequence":
            raise EntryFailedError("entry 'sequence' failed (exit 1):\nboom")
        return fake_result(entry, next(limits) if entry == DECODE_LIMIT else 600.0)

    monkeypatch.setattr("loaderlab.benchmark.run_child", fake_child)
    report = run_benchmark(config(tmp_path, tracking_uri, cores=2))

    assert "sequence" not in {r.entry for r in report.results} and set(report.failures) == {"sequence"}
    limit = 2 / (1 / 1000 + 1 / 3000)  # images over time across both measurements
    runs = runs_of(tracking_uri, report.benchmark_id)
    assert runs["sequence"].info.status == "FAILED" and "boom" in runs["sequence"].data.tags["error"]
    assert runs["tfdata"].data.metrics["ratio_to_limit"] == pytest.approx(600 / limit)
    assert runs[DECODE_LIMIT].data.metrics["images_per_sec"] == pytest.approx(limit)
    assert json.loads((tmp_path / "results.json").read_text())["failed"].keys() == {"sequence"}


def test_merge_limits_counts_images_over_time() -> None:
    merged = merge_limits(fake_result(DECODE_LIMIT, 1000.0), fake_result(DECODE_LIMIT, 3000.0))
    assert merged.images_per_sec == pytest.approx(1500.0)
    assert merged.extra_metrics["one_core_images_per_sec"] == pytest.approx(750.0)
    assert merged.pass_images_per_sec == [1000.0, 3000.0]


def test_table_shows_ratio_and_one_core_rate() -> None:
    table = format_table([fake_result(DECODE_LIMIT, 2000.0), fake_result("tfdata", 1800.0)], 2000.0, 2)
    assert "0.90" in table and "1000" in table  # tfdata's ratio; the one-core rate


def test_entries_parse_and_the_limit_is_always_measured() -> None:
    cfg = parse_args(["--entries", "tfdata,sequence", "--passes", "3"])
    assert cfg.passes == 3 and cfg.selected_entries() == [DECODE_LIMIT, "sequence", "tfdata"]
    assert parse_args([]).selected_entries() == default_entries()
    with pytest.raises(ValueError, match="Unknown benchmark entries"):
        BenchmarkConfig(entries=["nope"]).selected_entries()
    default_root = BenchmarkConfig().dataset_root()
    assert default_root == PROJECT_ROOT / "outputs" / "datasets" / "synthetic-n2000-px256-c4-s0"


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "benchmark.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--num-images", "--image-size", "--input-size", "--batch-size", "--passes", "--entries"):
        assert flag in out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [(36, 28), (40, 40)])  # resized, and already at size (copied)
def test_loaders_in_place_decode_matches_the_limits_decode_resize(
    tiny_root: Path, channels: int, size: tuple[int, int]
) -> None:
    """The limit times decode_resize; loaders decode into batch slots: the pixels must be identical."""
    from loaderlab.data.folder import scan_class_folders
    from loaderlab.loaders.decode import ImageDecoder, ImageSpec, decode_resize

    paths, labels, _ = scan_class_folders(tiny_root)
    spec = ImageSpec(*size, channels)
    images, _ = ImageDecoder(spec).batch(paths[:12], labels[:12])
    assert images.ctypes.data % 64 == 0  # aligned: TensorFlow adopts it without a copy
    for path, image in zip(paths[:12], images, strict=True):
        assert np.array_equal(image, decode_resize(path, spec))
