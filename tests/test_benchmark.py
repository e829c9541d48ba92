"""The loader benchmark: every entry measured in its own process, ratios to the limit, one MLflow run each."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY as TINY_DATA
from helpers import tree
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
    run_benchmark,
)
from loaderlab.benchmark.entries import check_entries
from loaderlab.benchmark.measure import KERAS_PATH, measure_entry
from loaderlab.benchmark.peers import PEERS
from loaderlab.benchmark.runner import summarize
from loaderlab.data.manifest import DatasetError
from loaderlab.utils.paths import OUTPUTS

TINY = {"input_size": 32, "batch_size": 16, "passes": 1, "rounds": 1}
AUTOTUNE_ON = "tfdata loader.autotune=true"


def load_cli():
    """src/benchmark.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("benchmark_cli", PROJECT_ROOT / "src" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_of(tracking_uri: str, benchmark_id: str) -> dict[str, object]:
    """The invocation's MLflow runs, by entry."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.benchmark_id = '{benchmark_id}'")
    by_entry = {run.data.tags["entry"]: run for run in runs}
    assert len(by_entry) == len(runs), "one run per entry"
    return by_entry


def config(tmp_path: Path, tracking_uri: str, root: Path, **overrides) -> BenchmarkConfig:
    """A tiny invocation on an existing folder, with every output under tmp_path."""
    return BenchmarkConfig(
        **{**TINY, **overrides},
        root=str(root),
        tracking_uri=tracking_uri,
        artifact_location=str(tmp_path / "artifacts"),
        out=str(tmp_path / "results.json"),
        progress=False,
    )


def test_every_entry_runs_in_its_own_process_and_is_logged(
    tmp_path: Path, tracking_uri: str, tiny_root: Path
) -> None:
    """The real thing, tiny: all default entries plus one with overrides, ratios to the same limit."""
    before = tree(tiny_root)
    # packed writes its pack under tmp_path, not the project's outputs/packed/.
    packed = f"packed loader.root={tmp_path / 'packed'}"
    crops, layers = "tfdata augment=rrc", "tfdata augment=layers"
    # The peers but the Keras one, and loader=keras: tests/test_peers.py.
    others = {*PEERS, "keras"} - {KERAS_FROM_DIRECTORY}
    entries = [packed if e == "packed" else e for e in default_entries() if e not in others]
    entries += [AUTOTUNE_ON, crops, layers]
    report = run_benchmark(config(tmp_path, tracking_uri, tiny_root, entries=entries))
    benchmark_id, results, table = report.benchmark_id, report.results, report.table
    assert tree(tiny_root) == before  # the dataset was only read

    assert [r.entry for r in results] == entries
    by_entry = {r.entry: r for r in results}
    limit = by_entry[DECODE_LIMIT].images_per_sec
    assert len(by_entry[DECODE_LIMIT].pass_images_per_sec) == 2  # measured first and last
    for r in results:
        assert r.images_per_sec > 0 and r.images_per_pass == TINY_DATA["num_images"], r.entry
        assert r.peak_rss_mb >= r.baseline_rss_mb > 0, r.entry
        assert r.entry in table
    assert by_entry[KERAS_FROM_DIRECTORY].peak_rss_mb > by_entry[DECODE_LIMIT].peak_rss_mb  # TF is loaded

    report = json.loads((tmp_path / "results.json").read_text())
    assert report["benchmark_id"] == benchmark_id and report["decode_limit"] == pytest.approx(limit)
    for row in report["results"]:
        assert row["ratio_to_limit"] == pytest.approx(row["images_per_sec"] / limit)  # one round

    runs = runs_of(tracking_uri, benchmark_id)
    assert set(runs) == set(entries)
    for entry, run in runs.items():
        metrics, params = run.data.metrics, run.data.params
        assert run.info.status == "FINISHED"
        assert metrics["images_per_sec"] == pytest.approx(by_entry[entry].images_per_sec)
        assert metrics["ratio_to_limit"] == pytest.approx(metrics["images_per_sec"] / limit)
        assert metrics["peak_rss_mb"] > 0
        assert params["num_images"] == str(TINY_DATA["num_images"]) and params["batch_size"] == "16"
        assert params["image_size_median"] == params["image_size_max"] == "40x40"
        assert int(params["cores"]) >= 1
    assert runs[DECODE_LIMIT].data.metrics["ratio_to_limit"] == pytest.approx(1.0)
    assert runs[DECODE_LIMIT].data.metrics["one_core_images_per_sec"] == pytest.approx(
        limit / int(runs[DECODE_LIMIT].data.params["cores"])
    )
    assert 0 < runs[DECODE_LIMIT].data.metrics["all_cores_ratio"] < 2  # measured, not assumed
    for entry in set(entries) - {DECODE_LIMIT}:  # CPU time per second, within what the machine has
        assert 0 < runs[entry].data.metrics["cores_busy"] <= 1.05 * os.cpu_count(), entry
    stored = runs[packed].data.metrics  # the limit of the pack's own JPEGs, beside the source's
    assert stored["stored_limit_images_per_sec"] > 0 and "(its stored JPEGs: one core x" in table
    assert stored["ratio_to_stored_limit"] == pytest.approx(
        stored["images_per_sec"] / stored["stored_limit_images_per_sec"]
    )
    assert runs["tfdata"].data.params["loader.autotune"] == "False"
    assert runs[AUTOTUNE_ON].data.params["loader.autotune"] == "True"
    assert runs["tfdata"].data.params["batch_path"] == KERAS_PATH  # how batches were pulled, on record
    assert [runs[e].data.params["augment"] for e in ("tfdata", crops, layers)] == ["none", "rrc", "layers"]


def fake_result(entry: str, rate: float) -> EntryResult:
    if entry == DECODE_LIMIT:
        extra = {"one_core_images_per_sec": rate / 2, "all_cores_ratio": 0.85}
    else:
        extra = {"cores_busy": 1.93}
    return EntryResult(entry, rate, [rate], 64, 100.0, 90.0, "pss_sum", {}, extra)


def test_a_failed_entry_is_recorded_and_the_others_still_logged(
    tmp_path: Path, tracking_uri: str, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No subprocesses: run_child is faked, so this checks the orchestration alone."""
    limits = iter([1000.0, 3000.0])  # first and last measurement of the limit

    def fake_child(entry: str, cfg, root, cores) -> EntryResult:
        if entry == "sequence":
            raise EntryFailedError("entry 'sequence' failed (exit 1):\nboom")
        return fake_result(entry, next(limits) if entry == DECODE_LIMIT else 600.0)

    monkeypatch.setattr("loaderlab.benchmark.runner.run_child", fake_child)
    report = run_benchmark(config(tmp_path, tracking_uri, tiny_root, cores=2))

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
    rounds = [{DECODE_LIMIT: fake_result(DECODE_LIMIT, 2000.0), "tfdata": fake_result("tfdata", 1800.0)}]
    table = format_table([summarize(DECODE_LIMIT, rounds), summarize("tfdata", rounds)], 2)
    assert "0.90" in table and "1000" in table  # tfdata's ratio; the one-core rate
    assert "every core at once, plain threads" in table and "1700   0.85" in table
    assert "cores busy" in table and table.count("1.93") == 1  # tfdata's, not the limit's


def test_rounds_report_the_median_ratio_to_each_rounds_own_limit(
    tmp_path: Path, tracking_uri: str, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine that slows down through the invocation: each entry is compared with its own round's
    limit, so its ratio holds still while every absolute rate falls."""
    speed = iter([3000.0, 2700.0, 2400.0, 2100.0])  # the limit at the start of rounds 1-3 and at the end
    current: list[float] = []
    calls: list[str] = []

    def fake_child(entry: str, cfg, root, cores) -> EntryResult:
        calls.append(entry)
        if entry == DECODE_LIMIT:
            current[:] = [next(speed)]
            return fake_result(entry, current[0])
        return fake_result(entry, 0.8 * current[0] if entry == "tfdata" else 0.5 * current[0])

    monkeypatch.setattr("loaderlab.benchmark.runner.run_child", fake_child)
    cfg = config(tmp_path, tracking_uri, tiny_root, cores=2, rounds=3, entries=["tfdata", "sequence"])
    report = run_benchmark(cfg)
    assert calls == [DECODE_LIMIT, "tfdata", "sequence"] * 3 + [DECODE_LIMIT]  # interleaved rounds
    by_entry = {r.entry: r for r in report.results}
    tfdata = by_entry["tfdata"].extra_metrics
    # Each round's limit: its two bracketing measurements, images over time (slower than their mean).
    assert 0.8 < tfdata["ratio_to_limit"] < 0.86 and tfdata["rounds"] == 3
    assert tfdata["ratio_to_limit_min"] <= tfdata["ratio_to_limit"] <= tfdata["ratio_to_limit_max"]
    assert by_entry["tfdata"].images_per_sec == pytest.approx(0.8 * 2700)  # the median round's rate
    assert "range" in report.table and "0.5" in report.table
    runs = runs_of(tracking_uri, report.benchmark_id)
    assert runs["tfdata"].data.metrics["ratio_to_limit"] == pytest.approx(tfdata["ratio_to_limit"])


def test_entries_parse_and_the_limit_is_always_measured() -> None:
    cfg = load_cli().parse_args(["--entries", "tfdata,sequence", AUTOTUNE_ON, "--passes", "3"])
    assert cfg.passes == 3 and cfg.entries == ["tfdata", "sequence", AUTOTUNE_ON]
    assert check_entries(cfg.entries) == [DECODE_LIMIT, "tfdata", "sequence", AUTOTUNE_ON]
    assert load_cli().parse_args([]).entries is None
    assert "tfdata_service" not in default_entries()  # it needs servers started first
    with pytest.raises(ValueError, match="Unknown benchmark entries"):
        check_entries(["nope"])
    with pytest.raises(ValueError, match="loader.<knob>"):
        check_entries(["tfdata data.channels=1"])


def test_the_synthetic_set_is_named_and_placed_as_data_synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    from loaderlab.benchmark.dataset import _synthetic_dataset

    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: None)  # no generation here
    root = _synthetic_dataset(BenchmarkConfig(num_images=2000, image_size=256, progress=False))
    assert root == OUTPUTS / "datasets" / "synthetic-n2000-px256-c4-s0"


def test_a_read_only_folder_is_benchmarked_and_left_unchanged(tmp_path: Path, tracking_uri: str, tiny_root):
    data = tmp_path / "photos"
    shutil.copytree(tiny_root, data)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = tree(data)
    try:
        report = run_benchmark(config(tmp_path, tracking_uri, data, entries=[DECODE_LIMIT]))
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert tree(data) == before
    assert report.dataset.num_images == TINY_DATA["num_images"] and not report.dataset.synthetic
    assert report.results[0].images_per_pass == TINY_DATA["num_images"]


def test_a_missing_folder_stops_with_a_message_and_creates_nothing(tmp_path: Path, tracking_uri: str, capsys):
    missing = tmp_path / "nowhere"
    args = ["--root", str(missing), "--tracking-uri", tracking_uri, "--entries", DECODE_LIMIT]
    assert load_cli().main(args) == 1
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
    with pytest.raises(DatasetError):
        run_benchmark(config(tmp_path, tracking_uri, missing, entries=[DECODE_LIMIT]))


def test_a_new_loader_yaml_is_benchmarked_with_no_edits(tmp_path: Path, tiny_root: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / "loader" / "mine.yaml").write_text("_target_: loaderlab.loaders.generator.GeneratorLoader\n")
    assert "mine" in default_entries(conf)
    result = measure_entry("mine", str(tiny_root), 32, 16, 1, 2, conf_dir=conf)
    assert result.images_per_pass == TINY_DATA["num_images"] and result.images_per_sec > 0


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "benchmark.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--root",
        "--num-images",
        "--image-size",
        "--input-size",
        "--batch-size",
        "--passes",
        "--entries",
    ):
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
