"""The loader benchmark: each input pipeline alone, no model, against the machine's decode limit.

The parent process generates the dataset, runs every entry in a fresh child process
(`python -m loaderlab.benchmark --entry X ...`, which prints one JSON line), prints the table
and logs one MLflow run per entry. A fresh process per entry keeps peak memory honest: no
entry inherits another's heap, threads or caches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loaderlab import PROJECT_ROOT
from loaderlab.loaders.base import usable_cores
from loaderlab.monitor import MB

EXPERIMENT = "loaderlab-benchmark"
DECODE_LIMIT = "decode_limit"
KERAS_FROM_DIRECTORY = "keras_image_dataset_from_directory"
LOADER_CONF = PROJECT_ROOT / "conf" / "loader"
LOADER_ORDER = ("inmemory", "generator", "sequence", "tfdata")  # the rest follow, alphabetically
RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's JSON line among any library output
NUM_CLASSES, SEED = 4, 0  # the synthetic dataset's draw, as conf/data/synthetic.yaml


def loader_entries() -> list[str]:
    """Every loader with a yaml in conf/loader/: a new loader can be benchmarked with no edits here."""
    names = sorted(p.stem for p in LOADER_CONF.glob("*.yaml"))
    return [n for n in LOADER_ORDER if n in names] + [n for n in names if n not in LOADER_ORDER]


def all_entries() -> list[str]:
    """Every entry --entries accepts: the decode limit, the Keras peer, then the loaders."""
    return [DECODE_LIMIT, KERAS_FROM_DIRECTORY, *loader_entries()]


def default_entries() -> list[str]:
    """What runs without --entries: the four built-in loaders (others may need servers started first)."""
    return [DECODE_LIMIT, KERAS_FROM_DIRECTORY, *(n for n in LOADER_ORDER if n in loader_entries())]


class EntryFailedError(RuntimeError):
    """An entry's child process failed; the message holds the tail of its output."""


@dataclass
class EntryResult:
    """What one entry measured in its own process."""

    entry: str
    images_per_sec: float
    pass_images_per_sec: list[float]
    images_per_pass: int
    peak_rss_mb: float
    baseline_rss_mb: float
    rss_method: str
    params: dict[str, Any] = field(default_factory=dict)  # the entry's own knobs
    extra_metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- child process: one entry


def _timed_passes(
    run_pass: Callable[[], int], passes: int, after_pass: Callable[[], object] | None = None
) -> tuple[list[float], int]:
    """One untimed warm-up pass, then `passes` timed ones; returns per-pass images/s and images.

    `after_pass` runs after each pass, outside the timing (a memory sample while its data is alive).
    """
    images = run_pass()  # warm-up: tracing, thread pools and the page cache are not the loader's cost
    if after_pass:
        after_pass()
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        counted = run_pass()
        elapsed = time.perf_counter() - start
        if after_pass:
            after_pass()
        if counted != images:
            raise RuntimeError(f"a pass yielded {counted} images, the warm-up {images}")
        rates.append(counted / elapsed)
    return rates, images


def _mean_rate(rates: Sequence[float]) -> float:
    """Images over time across passes (the harmonic mean of equal-sized passes)."""
    return len(rates) / sum(1.0 / r for r in rates)


def _fit_pass_runner(fit_kwargs: dict[str, Any]) -> Callable[[], int]:
    """A function that runs one epoch of batches through model.fit's own data path, minus the model.

    Keras' TF trainer wraps every input (tf.data, PyDataset, generator) in a TFEpochIterator and
    pulls each batch inside a tf.function; doing the same counts the wrapping costs fit pays.
    """
    import tensorflow as tf

    try:
        from keras.src.backend.tensorflow.trainer import TFEpochIterator
    except ImportError:  # a Keras that moved its internals: iterate the input directly
        return _plain_pass_runner(fit_kwargs)

    epochs = TFEpochIterator(
        x=fit_kwargs["x"],
        steps_per_epoch=fit_kwargs.get("steps_per_epoch"),
        shuffle=False,
        distribute_strategy=tf.distribute.get_strategy(),
    )
    epochs.reset()

    @tf.function
    def step(iterator: Any) -> tf.Tensor:
        images, labels = next(iterator)[:2]
        # Touch the pixels, as a model's first layer would, so nothing can be skipped.
        return tf.shape(labels)[0] + 0 * tf.cast(tf.reduce_max(images[:, 0, 0]), tf.int32)

    def run_pass() -> int:
        count = 0
        with epochs.catch_stop_iteration():
            for _begin, _end, iterator in epochs:
                count += int(step(iterator))
        return count

    return run_pass


def _plain_pass_runner(fit_kwargs: dict[str, Any]) -> Callable[[], int]:
    """One epoch by plain iteration, each batch copied to NumPy (the fallback of _fit_pass_runner)."""
    import itertools

    import numpy as np

    x, steps = fit_kwargs["x"], fit_kwargs.get("steps_per_epoch")

    def batches() -> Iterable:
        if steps:  # an endless generator
            return itertools.islice(x, steps)
        if hasattr(x, "__getitem__"):  # a PyDataset
            return (x[i] for i in range(len(x)))
        return x  # a tf.data.Dataset

    def run_pass() -> int:
        count = 0
        for images, labels, *_ in batches():
            np.asarray(images).max()  # touch the pixels
            count += len(np.asarray(labels))
        return count

    return run_pass


def _instantiate_loader(name: str, cores: int) -> tuple[Any, dict[str, Any]]:
    """The loader as its conf/loader yaml builds it; sequence gets one worker thread per core."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(LOADER_CONF / f"{name}.yaml")
    if name == "sequence":
        cfg.workers, cfg.use_multiprocessing = cores, False
    params = {f"loader.{k}": v for k, v in OmegaConf.to_container(cfg, resolve=True).items()}
    return instantiate(cfg), params


def _sampling_interval(sampler: Any, floor_s: float = 0.05, max_share: float = 0.02) -> float:
    """An interval at which memory sampling takes at most `max_share` of one core.

    One PSS sample of a process that maps TensorFlow costs ~15 ms of kernel time (it walks every
    mapping); every 50 ms that would take 30% of a core from the very pipeline being timed. The
    samples taken after each pass, outside the timing, catch what a pass holds at its end.
    """
    costs = []
    for _ in range(3):
        start = time.perf_counter()
        sampler.sample()
        costs.append(time.perf_counter() - start)
    return max(floor_s, sorted(costs)[1] / max_share)


def _decode_limit_pass(split: Any, spec: Any) -> Callable[[], int]:
    """One pass of decode_resize over every file, in this one thread."""
    import cv2

    from loaderlab.loaders.decode import decode_resize

    cv2.setNumThreads(1)  # one core means one thread: OpenCV's own pool would inflate the rate

    def run_pass() -> int:
        for path in split.paths:
            decode_resize(path, spec)
        return len(split)

    return run_pass


def _keras_from_directory_pass(root: str, input_size: int, batch_size: int) -> Callable[[], int]:
    """One pass of the peer: keras.utils.image_dataset_from_directory at the same sizes."""
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        root,
        labels="inferred",
        batch_size=batch_size,
        image_size=(input_size, input_size),
        shuffle=False,
        verbose=False,
    ).prefetch(tf.data.AUTOTUNE)
    return _fit_pass_runner({"x": ds})


def _loader_pass(
    entry: str, split: Any, decoder: Any, batch_size: int, cores: int
) -> tuple[Callable[[], int], dict[str, Any]]:
    """One training pass of a loader, and its knobs as params."""
    loader, params = _instantiate_loader(entry, cores)
    if loader.streaming:
        feed = loader.feed(split, decoder, batch_size, training=True, seed=SEED)
        return _fit_pass_runner(feed.fit_kwargs()), params
    held: list[Any] = []

    def run_pass() -> int:
        # Loading the array is this loader's whole input cost; fit then only slices memory.
        held.clear()  # the previous pass's array goes first, as it would in a fresh run
        held.append(loader.feed(split, decoder, batch_size, training=True, seed=SEED))
        return len(held[0].y)  # held until the sample after the pass has seen it

    return run_pass, params


def measure_entry(
    entry: str, root: str, input_size: int, batch_size: int, passes: int, cores: int
) -> EntryResult:
    """Measure one entry in this process: warm-up plus timed passes, memory sampled throughout."""
    from loaderlab.data.folder import scan_class_folders
    from loaderlab.data.manifest import make_split
    from loaderlab.loaders.decode import ImageDecoder, ImageSpec
    from loaderlab.monitor import MemorySampler

    if entry != DECODE_LIMIT:
        import tensorflow as tf  # noqa: F401  imported before the baseline, as in a training run

    paths, labels, _ = scan_class_folders(root)
    split = make_split(paths, labels)
    spec = ImageSpec(input_size, input_size, 3)
    decoder = ImageDecoder(spec)  # also tunes the allocator as the loaders run it: every entry shares it
    params: dict[str, Any] = {}
    sampler = MemorySampler()
    baseline = sampler.sample()
    sampler.interval_s = _sampling_interval(sampler)
    sampler.start()
    try:
        if entry == DECODE_LIMIT:
            run_pass = _decode_limit_pass(split, spec)
        elif entry == KERAS_FROM_DIRECTORY:
            run_pass = _keras_from_directory_pass(root, input_size, batch_size)
        else:
            run_pass, params = _loader_pass(entry, split, decoder, batch_size, cores)
        rates, images = _timed_passes(run_pass, passes, after_pass=sampler.sample)
    finally:
        peak = sampler.stop()
    extra: dict[str, float] = {}
    if entry == DECODE_LIMIT:  # one thread's rate; the limit is that rate on every core
        extra["one_core_images_per_sec"] = _mean_rate(rates)
        rates = [r * cores for r in rates]
    return EntryResult(
        entry=entry,
        images_per_sec=_mean_rate(rates),
        pass_images_per_sec=rates,
        images_per_pass=images,
        peak_rss_mb=peak / MB,
        baseline_rss_mb=baseline / MB,
        rss_method=sampler.method,
        params={**params, "memory_interval_s": round(sampler.interval_s, 3)},
        extra_metrics=extra,
    )


def child_main(argv: Sequence[str] | None = None) -> None:
    """`python -m loaderlab.benchmark --entry X ...`: measure one entry, print its JSON line."""
    parser = argparse.ArgumentParser(description="Measure one benchmark entry (run by the benchmark).")
    parser.add_argument("--entry", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--input-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--passes", type=int, required=True)
    parser.add_argument("--cores", type=int, required=True)
    args = parser.parse_args(argv)
    result = measure_entry(args.entry, args.root, args.input_size, args.batch_size, args.passes, args.cores)
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
    # Skip interpreter teardown: TF's from_generator threads can abort it after the result is out.
    os._exit(0)


# ---------------------------------------------------------------- parent process: the invocation


@dataclass
class BenchmarkConfig:
    """One invocation's settings; the CLI flags map one to one."""

    num_images: int = 2000
    image_size: int = 256  # px on disk
    input_size: int = 224  # px after resize
    batch_size: int = 64
    passes: int = 2
    entries: list[str] | None = None  # None: default_entries()
    root: str | None = None  # None: outputs/datasets/synthetic-n...-px...-c4-s0
    tracking_uri: str | None = None  # None: sqlite:///<repo>/outputs/mlflow.db
    artifact_location: str | None = None  # None: <repo>/outputs/mlartifacts
    out: str | None = None  # None: outputs/benchmarks/<benchmark_id>.json
    cores: int | None = None  # None: usable_cores()
    child_timeout_s: float = 900.0  # a hung entry (say, a server that never answers) fails
    progress: bool = True

    def dataset_root(self) -> Path:
        name = f"synthetic-n{self.num_images}-px{self.image_size}-c{NUM_CLASSES}-s{SEED}"
        return Path(self.root) if self.root else PROJECT_ROOT / "outputs" / "datasets" / name

    def selected_entries(self) -> list[str]:
        """The entries to run, in table order; the decode limit is always among them."""
        known = all_entries()
        wanted = set(self.entries or default_entries()) | {DECODE_LIMIT}
        unknown = sorted(wanted - set(known))
        if unknown:
            raise ValueError(f"Unknown benchmark entries {unknown}; choose from {known}.")
        return [e for e in known if e in wanted]


def run_child(entry: str, cfg: BenchmarkConfig, root: Path, cores: int) -> EntryResult:
    """Measure one entry in a fresh Python process and parse its JSON line."""
    cmd = [
        sys.executable,
        "-m",
        "loaderlab.benchmark",
        f"--entry={entry}",
        f"--root={root}",
        f"--input-size={cfg.input_size}",
        f"--batch-size={cfg.batch_size}",
        f"--passes={cfg.passes}",
        f"--cores={cores}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=cfg.child_timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
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
        images_per_sec=_mean_rate(rates),
        pass_images_per_sec=rates,
        images_per_pass=first.images_per_pass,
        peak_rss_mb=max(first.peak_rss_mb, last.peak_rss_mb),
        baseline_rss_mb=first.baseline_rss_mb,
        rss_method=first.rss_method,
        params=first.params,
        extra_metrics={
            "one_core_images_per_sec": _mean_rate(one_core),
            "one_core_images_per_sec_first": one_core[0],
            "one_core_images_per_sec_last": one_core[1],
        },
    )


def format_table(results: Iterable[EntryResult], limit: float, cores: int) -> str:
    """The table: entry, images/s, ratio to the limit, peak and baseline memory."""
    head = f"{'entry':<36} {'images/s':>9} {'ratio':>6} {'peak MB':>8} {'base MB':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.entry:<36} {r.images_per_sec:>9.0f} {r.images_per_sec / limit:>6.2f} "
            f"{r.peak_rss_mb:>8.0f} {r.baseline_rss_mb:>8.0f}"
        )
        if r.entry == DECODE_LIMIT:
            one = r.extra_metrics["one_core_images_per_sec"]
            rows.append(f"{'  (one core, x' + str(cores) + ' = limit)':<36} {one:>9.0f} {one / limit:>6.2f}")
    return "\n".join(rows)


def _log_run(experiment_id: str, entry: str, tags: dict[str, str], params: dict, metrics: dict) -> None:
    """One finished MLflow run for one entry."""
    import mlflow

    from loaderlab.tracking import tracked_run

    with tracked_run(experiment_id, run_name=entry, tags={**tags, "entry": entry}):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def _log_failed_run(experiment_id: str, entry: str, tags: dict[str, str], params: dict, error: str) -> None:
    """One FAILED MLflow run, with the error, so a broken entry is visible next to the others."""
    import mlflow

    from loaderlab.tracking import tracked_run

    try:
        with tracked_run(experiment_id, run_name=entry, tags={**tags, "entry": entry}):
            mlflow.log_params(params)
            raise EntryFailedError(error)
    except EntryFailedError:
        pass  # tracked_run recorded it and ended the run FAILED


@dataclass
class BenchmarkReport:
    """One invocation's outcome."""

    benchmark_id: str
    results: list[EntryResult]  # table order; failed entries are left out
    failures: dict[str, str]  # entry -> error
    limit: float  # images/s
    table: str
    out: Path  # the results JSON


def _measure_all(
    entries: list[str], cfg: BenchmarkConfig, root: Path, cores: int, label: str
) -> tuple[dict[str, EntryResult], dict[str, str]]:
    """Every entry in turn, each in a fresh process; the decode limit once more at the end."""
    results: dict[str, EntryResult] = {}
    failures: dict[str, str] = {}
    # The limit is measured first and again last, so a machine that speeds up or slows down
    # during the invocation (other jobs, thermal limits) does not skew every ratio one way.
    for entry in [*entries, DECODE_LIMIT]:  # one at a time: concurrent entries would share the cores
        if cfg.progress:
            print(f"[{label}] {entry} ...", flush=True)
        try:
            result = run_child(entry, cfg, root, cores)
        except (EntryFailedError, subprocess.TimeoutExpired) as e:
            if entry == DECODE_LIMIT and entry not in results:
                raise  # without the limit no ratio means anything
            print(f"  FAILED: {e}", file=sys.stderr, flush=True)
            failures.setdefault(entry, str(e))
            continue
        if cfg.progress:
            print(f"  {result.images_per_sec:,.0f} images/s, peak {result.peak_rss_mb:,.0f} MB", flush=True)
        results[entry] = merge_limits(results[entry], result) if entry in results else result
    failures = {e: error for e, error in failures.items() if e not in results}  # a limit re-measured fine
    return results, failures


def run_benchmark(cfg: BenchmarkConfig) -> BenchmarkReport:
    """Run the invocation: measure, log one MLflow run per entry, write the results JSON."""
    from loaderlab.data.synthetic import generate
    from loaderlab.tracking import connect, git_commit

    entries = cfg.selected_entries()
    cores = cfg.cores or usable_cores()
    root = generate(
        cfg.dataset_root(), cfg.num_images, cfg.image_size, NUM_CLASSES, SEED, progress=cfg.progress
    )
    benchmark_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    uri = cfg.tracking_uri or f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"
    artifacts = cfg.artifact_location or str(PROJECT_ROOT / "outputs" / "mlartifacts")
    experiment_id = connect(uri, EXPERIMENT, artifacts)  # before measuring: a bad URI fails fast
    tags = {"benchmark_id": benchmark_id, "git_commit": git_commit(), "device": "CPU (input pipeline only)"}
    params = {
        "num_images": cfg.num_images,
        "image_size": cfg.image_size,
        "input_size": cfg.input_size,
        "batch_size": cfg.batch_size,
        "passes": cfg.passes,
        "cores": cores,
        "channels": 3,
        "dataset": str(root),
    }
    measured, failures = _measure_all(entries, cfg, root, cores, f"benchmark {benchmark_id}")
    limit = measured[DECODE_LIMIT].images_per_sec
    results = [measured[e] for e in entries if e in measured]
    for result in results:  # logged once the limit is final, in table order
        metrics = {
            "images_per_sec": result.images_per_sec,
            "ratio_to_limit": result.images_per_sec / limit,
            "peak_rss_mb": result.peak_rss_mb,
            "baseline_rss_mb": result.baseline_rss_mb,
            **result.extra_metrics,
        }
        run_tags = {**tags, "rss_method": result.rss_method}
        _log_run(experiment_id, result.entry, run_tags, {**params, **result.params}, metrics)
    for entry, error in failures.items():
        _log_failed_run(experiment_id, entry, tags, params, error)
    out = Path(cfg.out) if cfg.out else PROJECT_ROOT / "outputs" / "benchmarks" / f"{benchmark_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark_id": benchmark_id,
                "tracking_uri": uri,
                "params": params,
                "decode_limit": limit,
                "results": [asdict(r) | {"ratio_to_limit": r.images_per_sec / limit} for r in results],
                "failed": failures,
            },
            indent=2,
        )
    )
    table = format_table(results, limit, cores)
    return BenchmarkReport(benchmark_id, results, failures, limit, table, out)


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The benchmark's command line."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(
        prog="python src/benchmark.py",
        description="Each loader's input pipeline alone, no model, against this machine's decode limit. "
        "Every entry runs in a fresh process; results go to MLflow experiment 'loaderlab-benchmark'.",
    )
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="px on disk")
    parser.add_argument("--input-size", type=int, default=defaults.input_size, help="px after resize")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--passes", type=int, default=defaults.passes, help="timed passes after one warm-up")
    parser.add_argument(
        "--entries",
        nargs="+",
        default=None,
        help=f"space- or comma-separated; default {default_entries()}; any of {all_entries()}",
    )
    parser.add_argument("--root", default=None, help="dataset folder (generated if absent)")
    parser.add_argument("--tracking-uri", default=None, help="default sqlite:///<repo>/outputs/mlflow.db")
    parser.add_argument("--out", default=None, help="results JSON; default outputs/benchmarks/<id>.json")
    args = parser.parse_args(argv)
    entries = [e for arg in args.entries for e in arg.split(",") if e] if args.entries else None
    if args.passes < 1 or args.batch_size < 1 or args.input_size < 1:
        parser.error("--passes, --batch-size and --input-size must be positive")
    return BenchmarkConfig(
        num_images=args.num_images,
        image_size=args.image_size,
        input_size=args.input_size,
        batch_size=args.batch_size,
        passes=args.passes,
        entries=entries,
        root=args.root,
        tracking_uri=args.tracking_uri,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python src/benchmark.py`: run, print the table, say where the results went."""
    cfg = parse_args(argv)
    report = run_benchmark(cfg)
    print(
        f"\nbenchmark_id={report.benchmark_id}: {cfg.num_images} images, {cfg.image_size} -> "
        f"{cfg.input_size} px, batch {cfg.batch_size}, {cfg.passes} timed passes after a warm-up\n"
        f"{report.table}\n\nMLflow experiment '{EXPERIMENT}' (tag benchmark_id); results: {report.out}"
    )
    if report.failures:
        print(f"FAILED: {', '.join(report.failures)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    child_main()
