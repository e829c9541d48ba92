"""Running an invocation: the dataset, every entry in a fresh process, the table, one MLflow run per entry.

A fresh process per entry keeps peak memory honest: no entry inherits another's heap, threads or caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

from loaderlab.benchmark._child import RESULT_PREFIX, SKIP_PREFIX
from loaderlab.benchmark.dataset import Dataset, prepare_dataset
from loaderlab.benchmark.entries import CONF_DIR, DECODE_LIMIT, check_entries, default_entries, split_entry
from loaderlab.benchmark.measure import EntryResult, mean_rate
from loaderlab.benchmark.peers import PEERS
from loaderlab.utils.paths import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, OUTPUTS
from loaderlab.utils.system import usable_cores

EXPERIMENT = "loaderlab-benchmark"


class EntryFailedError(RuntimeError):
    """An entry's child process failed; the message holds the tail of its output."""


class EntrySkippedError(RuntimeError):
    """A peer cannot run here (a library missing or too old); the message says how to get it."""


@dataclass
class BenchmarkConfig:
    """One invocation's settings; the CLI flags map one to one."""

    num_images: int = 2000  # synthetic set only
    image_size: int = 256  # px on disk, synthetic set only
    input_size: int = 224  # px after resize
    batch_size: int = 64
    passes: int = 2
    rounds: int = 3  # every entry once per round, interleaved; figures are medians over the rounds
    augment: str = "none"  # what every entry and the limit decode: none | flip | rrc | layers
    entries: list[str] | None = None  # None: default_entries()
    root: str | None = None  # an existing class-folder dataset, only read; None: the synthetic set
    tracking_uri: str = DEFAULT_TRACKING_URI
    artifact_location: str = str(DEFAULT_ARTIFACTS)
    out: str | None = None  # None: outputs/benchmarks/<benchmark_id>.json
    cores: int | None = None  # None: usable_cores()
    child_timeout_s: float = 900.0  # a hung entry (say, a server that never answers) fails
    progress: bool = True
    conf_dir: Path = CONF_DIR


@dataclass
class BenchmarkReport:
    """One invocation's outcome."""

    benchmark_id: str
    dataset: Dataset
    results: list[EntryResult]  # table order; failed entries are left out
    failures: dict[str, str]  # entry -> error
    skipped: dict[str, str]  # entry -> why it cannot run here
    limit: float  # images/s
    table: str
    out: Path  # the results JSON


def run_benchmark(cfg: BenchmarkConfig) -> BenchmarkReport:
    """Run the invocation: measure, log one MLflow run per entry, write the results JSON."""
    from loaderlab.tracking import connect, git_commit

    entries = cfg.entries or default_entries(cfg.conf_dir)
    if not cfg.entries and cfg.root and "://" in cfg.root:  # the peers read local folders only
        entries = [e for e in entries if split_entry(e)[0] not in PEERS]
    entries = check_entries(entries, cfg.conf_dir)
    cores = cfg.cores or usable_cores()
    experiment_id = connect(cfg.tracking_uri, EXPERIMENT, cfg.artifact_location)  # a bad URI fails first
    dataset = prepare_dataset(cfg)
    benchmark_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    tags = {"benchmark_id": benchmark_id, "git_commit": git_commit(), "device": "CPU (input pipeline only)"}
    params = {
        **dataset.describe(),
        "input_size": cfg.input_size,
        "batch_size": cfg.batch_size,
        "passes": cfg.passes,
        "rounds": cfg.rounds,
        "cores": cores,
        "channels": 3,
        "dataset": str(dataset.root),
    }
    rounds, failures, skipped = _measure_rounds(
        entries, cfg, dataset.root, cores, f"benchmark {benchmark_id}"
    )
    measured = {e: summarize(e, rounds) for e in entries if any(e in r for r in rounds)}
    limit = measured[DECODE_LIMIT].images_per_sec
    results = [measured[e] for e in entries if e in measured]
    out = Path(cfg.out) if cfg.out else OUTPUTS / "benchmarks" / f"{benchmark_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_folder = out.parent  # the runs' MLflow journals, gone once delivered
    for result in results:  # logged once the limit is final, in table order
        metrics = {
            "images_per_sec": result.images_per_sec,
            "peak_rss_mb": result.peak_rss_mb,
            "baseline_rss_mb": result.baseline_rss_mb,
            **result.extra_metrics,
        }
        run_tags = {**tags, "rss_method": result.rss_method}
        _log_run(
            cfg.tracking_uri,
            experiment_id,
            run_folder,
            result.entry,
            run_tags,
            {**params, **result.params},
            metrics,
        )
    for entry, error in failures.items():
        _log_run(cfg.tracking_uri, experiment_id, run_folder, entry, tags, params, error=error)
    rows = [asdict(r) | {"ratio_to_limit": r.extra_metrics["ratio_to_limit"]} for r in results]
    summary = {"benchmark_id": benchmark_id, "tracking_uri": cfg.tracking_uri, "params": params}
    out.write_text(
        json.dumps(
            summary | {"decode_limit": limit, "results": rows, "failed": failures, "skipped": skipped},
            indent=2,
        )
    )
    table = format_table(results, cores, skipped)
    return BenchmarkReport(benchmark_id, dataset, results, failures, skipped, limit, table, out)


def run_child(entry: str, cfg: BenchmarkConfig, root: Path, cores: int) -> EntryResult:
    """Measure one entry in a fresh Python process and parse its JSON line."""
    cmd = [
        sys.executable, "-m", "loaderlab.benchmark._child", f"--entry={entry}", f"--root={root}",
        f"--conf-dir={cfg.conf_dir}", f"--input-size={cfg.input_size}", f"--batch-size={cfg.batch_size}",
        f"--passes={cfg.passes}", f"--cores={cores}", f"--augment={cfg.augment}",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=cfg.child_timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    skips = [
        line.removeprefix(SKIP_PREFIX) for line in proc.stdout.splitlines() if line.startswith(SKIP_PREFIX)
    ]
    if proc.returncode == 0 and skips:
        raise EntrySkippedError(skips[-1])
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise EntryFailedError(f"entry '{entry}' failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return EntryResult(**json.loads(lines[-1].removeprefix(RESULT_PREFIX)))


def merge_limits(first: EntryResult, last: EntryResult) -> EntryResult:
    """The decode limit over both of its measurements: rates over all passes, the higher peak."""
    rates = first.pass_images_per_sec + last.pass_images_per_sec
    one_core = [r.extra_metrics["one_core_images_per_sec"] for r in (first, last)]
    return EntryResult(
        entry=first.entry,
        images_per_sec=mean_rate(rates),
        pass_images_per_sec=rates,
        images_per_pass=first.images_per_pass,
        peak_rss_mb=max(first.peak_rss_mb, last.peak_rss_mb),
        baseline_rss_mb=first.baseline_rss_mb,
        rss_method=first.rss_method,
        params=first.params,
        extra_metrics={
            "one_core_images_per_sec": mean_rate(one_core),
            "one_core_images_per_sec_first": one_core[0],
            "one_core_images_per_sec_last": one_core[1],
            "all_cores_ratio": median(r.extra_metrics["all_cores_ratio"] for r in (first, last)),
        },
    )


def summarize(entry: str, rounds: list[dict[str, EntryResult]]) -> EntryResult:
    """An entry over the rounds it ran in: the median rate, and its median ratio to the same round's
    limit with the range (so the machine's drift between rounds cancels); memory as the median peak."""
    ran = [(r[entry], r[DECODE_LIMIT]) for r in rounds if entry in r]
    ratios = [result.images_per_sec / limit.images_per_sec for result, limit in ran]
    results = [result for result, _ in ran]
    first = results[0]
    extra = {key: max(r.extra_metrics.get(key, 0.0) for r in results) for key in first.extra_metrics}
    for key in ("all_cores_ratio", "stored_limit_images_per_sec", "ratio_to_stored_limit", "cores_busy"):
        if key in extra:  # a rate or ratio over the rounds: the median, not the best
            extra[key] = median(r.extra_metrics[key] for r in results)
    if "ratio_to_stored_limit" in extra:
        stored = [r.extra_metrics["ratio_to_stored_limit"] for r in results]
        extra |= {"ratio_to_stored_limit_min": min(stored), "ratio_to_stored_limit_max": max(stored)}
    extra |= {
        "ratio_to_limit": median(ratios),
        "ratio_to_limit_min": min(ratios),
        "ratio_to_limit_max": max(ratios),
        "rounds": float(len(ratios)),
    }
    return EntryResult(
        entry=entry,
        images_per_sec=median(r.images_per_sec for r in results),
        pass_images_per_sec=[rate for r in results for rate in r.pass_images_per_sec],
        images_per_pass=first.images_per_pass,
        peak_rss_mb=median(r.peak_rss_mb for r in results),
        baseline_rss_mb=median(r.baseline_rss_mb for r in results),
        rss_method=first.rss_method,
        params=first.params,
        extra_metrics=extra,
    )


def format_table(results: Iterable[EntryResult], cores: int, skipped: dict[str, str] | None = None) -> str:
    """The table: entry, median images/s, median ratio to the limit and its range, memory, and the
    cores the entry kept busy (CPU seconds per second: below the cores, part of the time went idle);
    then each peer's output against the spec, and the entries skipped with their reason."""
    results = list(results)
    width = max([36, *(len(r.entry) for r in results)])
    head = (
        f"{'entry':<{width}} {'images/s':>9} {'ratio':>6} {'range':>11} {'peak MB':>8} {'base MB':>8} "
        f"{'cores busy':>10}"
    )
    rows = [head, "-" * len(head)]
    notes = []
    for r in results:
        m = r.extra_metrics
        spread = f"{m['ratio_to_limit_min']:.2f}-{m['ratio_to_limit_max']:.2f}"
        busy = f" {m['cores_busy']:>10.2f}" if "cores_busy" in m else ""
        rows.append(
            f"{r.entry:<{width}} {r.images_per_sec:>9.0f} {m['ratio_to_limit']:>6.2f} {spread:>11} "
            f"{r.peak_rss_mb:>8.0f} {r.baseline_rss_mb:>8.0f}{busy}"
        )
        if r.entry == DECODE_LIMIT:
            one = m["one_core_images_per_sec"]
            rows.append(f"{'  (one core, x' + str(cores) + ' = limit)':<{width}} {one:>9.0f}")
            together = m["all_cores_ratio"]
            rows.append(
                f"{'  (every core at once, plain threads)':<{width}} "
                f"{together * r.images_per_sec:>9.0f} {together:>6.2f}"
            )
        if "stored_limit_images_per_sec" in m:
            spread = f"{m['ratio_to_stored_limit_min']:.2f}-{m['ratio_to_stored_limit_max']:.2f}"
            rows.append(
                f"{'  (its stored JPEGs: one core x' + str(cores) + ')':<{width}} "
                f"{m['stored_limit_images_per_sec']:>9.0f} {m['ratio_to_stored_limit']:>6.2f} {spread:>11}"
            )
        if m.get("pack_mb"):
            notes.append(
                f"{r.entry}: pack of {m['pack_mb']:.0f} MB written once in {m['pack_time_s']:.1f} s "
                f"({1000 * m['pack_time_s'] / r.images_per_pass:.1f} s per 1,000 images; 0: an existing "
                "pack reused), not counted in its rate"
            )
        if "psnr_db" in m:
            notes.append(
                f"{r.entry}: yields {r.params.get('output', '?')}, {m['psnr_db']:.1f} dB PSNR to the spec's "
                f"pixels ({_psnr_reading(m['psnr_db'])}); timed by {r.params.get('batch_path', '?')}"
            )
    notes += [f"{entry}: skipped, {why}" for entry, why in (skipped or {}).items()]
    return "\n".join(rows + notes)


def _psnr_reading(psnr_db: float) -> str:
    """What a PSNR to the spec's decode says: the same pixels, a rounding apart, or another resize."""
    if psnr_db == float("inf"):
        return "the same pixels"
    if psnr_db != psnr_db:  # NaN: another shape
        return "another shape"
    return "the spec within rounding" if psnr_db >= 40 else "resized otherwise than the spec"


def _measure_rounds(
    entries: list[str], cfg: BenchmarkConfig, root: Path, cores: int, label: str
) -> tuple[list[dict[str, EntryResult]], dict[str, str], dict[str, str]]:
    """`cfg.rounds` rounds of every entry, each in a fresh process, one at a time (concurrent entries
    would share the cores). The limit opens each round and closes the last; a round's limit is the
    mean of the two around it, so a machine that speeds up or slows down (other jobs, thermal
    limits) moves an entry and its limit together."""
    limits: list[EntryResult] = []
    rounds: list[dict[str, EntryResult]] = []
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    others = [e for e in entries if e != DECODE_LIMIT]
    for number in range(cfg.rounds + 1):
        last = number == cfg.rounds
        for entry in [DECODE_LIMIT] if last else [DECODE_LIMIT, *others]:
            if entry in skipped:
                continue
            if cfg.progress:
                print(
                    f"[{label}, round {min(number, cfg.rounds - 1) + 1}/{cfg.rounds}] {entry} ...", flush=True
                )
            try:
                result = run_child(entry, cfg, root, cores)
            except EntrySkippedError as e:
                print(f"  skipped: {e}", flush=True)
                skipped[entry] = str(e)
                continue
            except (EntryFailedError, subprocess.TimeoutExpired) as e:
                if entry == DECODE_LIMIT:
                    raise  # without the limit no ratio means anything
                print(f"  FAILED: {e}", file=sys.stderr, flush=True)
                failures.setdefault(entry, str(e))
                continue
            if cfg.progress:
                print(
                    f"  {result.images_per_sec:,.0f} images/s, peak {result.peak_rss_mb:,.0f} MB", flush=True
                )
            if entry == DECODE_LIMIT:
                limits.append(result)
                if number > 0:  # the previous round is now bracketed by two limits
                    rounds[-1][DECODE_LIMIT] = merge_limits(limits[-2], limits[-1])
                if not last:
                    rounds.append({})
            else:
                rounds[-1][entry] = result
    failures = {e: error for e, error in failures.items() if not any(e in r for r in rounds)}
    return rounds, failures, skipped


def _log_run(
    uri: str,
    experiment_id: str,
    folder: Path,
    entry: str,
    tags: dict,
    params: dict,
    metrics: dict | None = None,
    error: str = "",
) -> None:
    """One MLflow run for one entry: FINISHED with its metrics, or FAILED with the error."""
    from loaderlab.tracking import tracked_run

    try:
        with tracked_run(uri, experiment_id, entry, {**tags, "entry": entry}, folder) as run_log:
            run_log.params(params)
            if error:
                raise EntryFailedError(error)
            run_log.metrics(metrics or {})
    except EntryFailedError:
        pass  # tracked_run recorded it and ended the run FAILED
