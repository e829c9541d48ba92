"""The pictures of docs/, drawn with matplotlib from real results: one subcommand per picture.

python docs/figures/make_figures.py decision               # the loader decision chart (a drawing)
python docs/figures/make_figures.py ratios                 # ratios to the decode limit, from a benchmark
python docs/figures/make_figures.py pack                   # a pack and its read path (a drawing)
python docs/figures/make_figures.py journal                # a real journal through a server outage (~1 min)
python docs/figures/make_figures.py showcase               # a real run's curves, read from MLflow
python docs/figures/make_figures.py all                    # every one of them

Each writes docs/figures/<name>.png (or --out) and prints what it read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BENCHMARKS = ROOT / "outputs" / "benchmarks"
STORE = f"sqlite:///{ROOT / 'outputs' / 'mlflow.db'}"
DPI = 110

# The colours compare.py gives each loader (report/chart.py), so that the pictures agree with its charts.
COLOURS = {
    "decode_limit": "#7f7f7f",
    "keras_image_dataset_from_directory": "#8c564b",
    "inmemory": "#d62728",
    "generator": "#1f77b4",
    "sequence": "#ff7f0e",
    "tfdata": "#9467bd",
    "packed": "#2ca02c",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _drawing(width: float, height: float):
    """A blank canvas for a drawing, one unit per inch: (pyplot, figure, axes)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(width, height))
    axes.set_xlim(0, width)
    axes.set_ylim(0, height)
    axes.axis("off")
    return plt, figure, axes


# --- the decision chart ------------------------------------------------------------------------------


def decision(out: Path) -> Path:
    """A flowchart: four questions, each answered by a loader (a drawing of docs/pick-a-loader.md)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt, figure, axes = _drawing(11, 8.2)

    def box(x, y, w, h, text, face, bold=False, size=10.5):
        axes.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.08,rounding_size=0.15",
                facecolor=face,
                edgecolor="#333333",
                linewidth=1.2,
            )  # fmt: skip
        )
        axes.text(x, y, text, ha="center", va="center", fontsize=size, weight="bold" if bold else "normal")

    def arrow(start, end, label="", side=(0.0, 0.12)):
        axes.add_patch(
            FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, linewidth=1.3, color="#333333")
        )
        if label:
            mid = ((start[0] + end[0]) / 2 + side[0], (start[1] + end[1]) / 2 + side[1])
            axes.text(*mid, label, ha="center", va="bottom", fontsize=10, style="italic", color="#333333")

    question, answer = "#fff5d6", "#dff0d8"
    qx, ax_ = 3.0, 8.3
    rows = [7.1, 5.35, 3.6, 1.85]
    questions = [
        "Training on several machines?",
        "Data in a bucket (s3://, gs://, az://)\nthat stays the same between runs?",
        "Source images much larger than the\ninput (photos), or many epochs\nover the same files?",
        "Decoded set (N x H x W x 3 bytes,\ntwice that in fit) a small\nfraction of memory?",
    ]
    answers = [
        (
            "tfdata  strategy=multiworker\nor tfdata_service",
            "each worker reads its own shard;\nthe decode can move to other hosts",
        ),
        (
            "packed  loader.root=s3://.../packs",
            "one pack, written once, read from\na local copy by every job",
        ),
        ("packed", "the large decode is paid once;\nthen stored JPEGs at the input size"),
        ("inmemory  (or tfdata)", "the array is built before training;\nthe guard refuses what does not fit"),
    ]
    axes.text(qx, 8.0, "Start", ha="center", va="center", fontsize=11, weight="bold")
    arrow((qx, 7.85), (qx, rows[0] + 0.42))
    for y, text, (name, why) in zip(rows, questions, answers, strict=True):
        box(qx, y, 4.6, 1.05, text, question)
        box(ax_, y + 0.12, 4.2, 0.55, name, answer, bold=True, size=11)
        axes.text(ax_, y - 0.42, why, ha="center", va="center", fontsize=8.8, color="#444444")
        arrow((qx + 2.38, y + 0.12), (ax_ - 2.18, y + 0.12), "yes")
    for upper, lower in zip(rows, rows[1:], strict=False):
        arrow((qx, upper - 0.6), (qx, lower + 0.6), "no", side=(0.25, -0.1))
    box(qx, 0.45, 4.6, 0.62, "tfdata  (the default)", answer, bold=True, size=11)
    arrow((qx, rows[-1] - 0.6), (qx, 0.82), "no", side=(0.25, -0.1))
    axes.text(
        ax_, 0.45,
        "Model is the bottleneck (a slow step)? Any streaming\nloader keeps up; generator is the simplest.",
        ha="center", va="center", fontsize=9, color="#444444",
    )  # fmt: skip
    axes.set_title(
        "Which loader? (the rules of docs/pick-a-loader.md; measure your own data to be sure)", fontsize=12
    )
    return _save(figure, out)


# --- each loader's ratio to the decode limit ------------------------------------------------------------


def latest_benchmark(folder: Path = BENCHMARKS) -> tuple[Path, str]:
    """The most recent results JSON with no failed entry that ran every default entry; else, of those
    with no failure, the one that ran the most default entries, the most recent of them (and why)."""
    from loaderlab.benchmark.entries import default_entries

    wanted = set(default_entries())
    found = []
    for path in sorted(folder.glob("2*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if data.get("failed") or not data.get("results"):
            continue
        entries = {row["entry"] for row in data["results"]}
        if wanted <= entries:
            return path, "the most recent benchmark that ran every default entry, none failed"
        found.append((len(wanted & entries), path.name, path))
    if found:
        _, _, path = max(found)
        return (
            path,
            "no benchmark ran every default entry: of those with none failed, the most recent of the widest",
        )
    raise SystemExit(
        f"No benchmark results in {folder}. Make one first: "
        "python src/benchmark.py --rounds 1 --num-images 400"
    )


def ratios(out: Path, results: Path | None = None) -> Path:
    """Horizontal bars: each entry's median ratio to its round's decode limit, with the range over rounds."""
    plt = _pyplot()
    results, why = (results, "named on the command line") if results else latest_benchmark()
    data = json.loads(results.read_text())
    rows = [r for r in data["results"] if r["entry"] != "decode_limit"]
    rows.sort(key=lambda r: r["ratio_to_limit"])
    figure, axes = plt.subplots(figsize=(9.5, 0.55 * len(rows) + 2.2))
    names = [
        r["entry"].replace("keras_image_dataset_from_directory", "keras image_dataset_from_directory")
        for r in rows
    ]
    values = [r["ratio_to_limit"] for r in rows]
    low = [r["ratio_to_limit"] - r["extra_metrics"]["ratio_to_limit_min"] for r in rows]
    high = [r["extra_metrics"]["ratio_to_limit_max"] - r["ratio_to_limit"] for r in rows]
    colours = [COLOURS.get(r["entry"].split()[0], "#17becf") for r in rows]
    axes.barh(names, values, xerr=[low, high], color=colours, capsize=4, edgecolor="#333333", linewidth=0.6)
    for y, row in enumerate(rows):
        axes.text(
            row["extra_metrics"]["ratio_to_limit_max"] + 0.02, y,
            f"{row['ratio_to_limit']:.2f}  ({row['images_per_sec']:,.0f} img/s)", va="center", fontsize=9,
        )  # fmt: skip
    axes.axvline(1.0, color="#333333", linestyle="--", linewidth=1)
    axes.text(1.0, len(rows) - 0.4, " decode limit", fontsize=9, va="bottom")
    params = data["params"]
    limit = data["decode_limit"]
    rounds = params.get("rounds")
    axes.set_xlabel("images/s as a share of the same round's decode limit (median; bar: range over rounds)")
    axes.set_xlim(0, max(1.15, max(r["extra_metrics"]["ratio_to_limit_max"] for r in rows) + 0.45))
    axes.set_title(
        f"Each loader against this machine's decode limit ({limit:,.0f} img/s)\n"
        f"benchmark {data['benchmark_id']}: {params.get('num_images')} images, "
        f"{params.get('input_size')} px input, "
        f"batch {params.get('batch_size')}, augment {data['results'][0]['params'].get('augment', 'none')}, "
        f"{rounds} round(s), {params.get('cores')} cores",
        fontsize=11,
    )
    axes.spines[["top", "right"]].set_visible(False)
    print(f"ratios: {results} ({why})")
    return _save(figure, out)


# --- a pack and its read path -----------------------------------------------------------------------


def pack(out: Path) -> Path:
    """A drawing of data/pack.py's writer and loaders/packed.py's reader, in their own terms."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt, figure, axes = _drawing(14, 7.0)

    def box(x, y, w, h, title, body="", face="#eef3fb", size=8.4):
        axes.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle="round,pad=0.05,rounding_size=0.12",
                facecolor=face,
                edgecolor="#333333",
                linewidth=1.1,
            )  # fmt: skip
        )
        axes.text(x + w / 2, y + h - 0.18, title, ha="center", va="top", fontsize=10, weight="bold")
        if body:
            axes.text(x + w / 2, y + h - 0.55, body, ha="center", va="top", fontsize=size, color="#333333")

    def arrow(start, end):
        axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333333"))

    write, store, read = "#fff5d6", "#e8e8e8", "#dff0d8"
    axes.text(0.2, 6.8, "Written once (data/pack.py), on first use", fontsize=11, weight="bold")
    box(
        0.2,
        4.45,
        2.6,
        2.0,
        "your images",
        "JPEG, PNG, BMP, GIF,\nany size; a folder,\na table or a bucket\n(only read)",
        write,
    )
    box(
        3.3,
        4.45,
        3.1,
        2.0,
        "decode + re-encode",
        "the shared spec's decode,\nshorter side at pack_side\n(aspect kept), JPEG q90 4:4:4;\n"
        "training: a seeded random order",
        write,
    )
    arrow((2.85, 5.45), (3.25, 5.45))
    box(6.9, 4.2, 6.9, 2.45, "<loader.root>/<fingerprint>/", "", store)
    axes.text(
        10.35,
        6.05,
        "each record: image (JPEG bytes), label, index",
        ha="center",
        fontsize=8.4,
        color="#333333",
    )
    for i in range(4):
        box(7.15 + i * 1.3, 4.75, 1.1, 1.05, f"{i:05d}\n.tfrecord", "", "#ffffff")
    axes.text(12.45, 5.3, "...", fontsize=14, ha="center", va="center")
    axes.text(13.2, 5.3, "pack\n.json", ha="center", va="center", fontsize=8.6, weight="bold",
              bbox={"boxstyle": "round", "facecolor": "#ffffff", "edgecolor": "#333333"})  # fmt: skip
    axes.text(10.35, 4.35, "shards of about 100 MB (loader.shard_mb), committed one by one; pack.json last",
              ha="center", fontsize=8.4)  # fmt: skip
    arrow((6.45, 5.45), (6.85, 5.45))

    steps = [
        ("shards", "in a new order\neach epoch\n(training)"),
        ("interleave", "readers: min(shards,\nnum_parallel_calls),\neach handing on\nruns of 64 records"),
        ("shuffle", "unbatch, then a\nbuffer of 2,048\nrecords\n(loader.shuffle_buffer)"),
        ("batch", "batch.train records;\nrepeat: one endless\nstream of whole\nepochs"),
        (
            "parse + decode",
            "decode_jpeg at the\ninput size; else\ndecode_and_crop_jpeg\nof the window,\nthen resize",
        ),
        ("prefetch", "2 batches\n(loader.prefetch)"),
        ("model.fit", "uint8 batches;\nsteps_per_epoch\nis one epoch"),
    ]
    width, gap, y, height = 1.74, 0.25, 0.95, 1.85
    for i, (title, body) in enumerate(steps):
        x = 0.2 + i * (width + gap)
        box(x, y, width, height, title, body, read if title != "model.fit" else "#fde2e2")
        if i:
            arrow((x - gap - 0.02, y + 1.0), (x - 0.03, y + 1.0))
    axes.plot([7.6, 7.6, 1.06], [4.2, 3.85, 3.85], color="#333333", linewidth=1.1)
    arrow((1.06, 3.85), (1.06, y + height + 0.07))
    axes.text(
        1.5, 3.42, "Read every epoch (loaders/packed.py), in TensorFlow's graph", fontsize=11, weight="bold"
    )
    axes.text(
        0.2, 0.35,
        "map(parse + decode) decodes num_parallel_calls batches at once (null: cores + 1), "
        "in order when endless; "
        "tf.data autotuning off (loader.autotune).\nA pack in a bucket is copied shard by shard into "
        "outputs/cache/packs/ (up to loader.cache_gb) and read there, or streamed in 16 MB reads.",
        fontsize=8.6, color="#333333", va="bottom",
    )  # fmt: skip
    axes.set_title("loader=packed: a pack and its read path", fontsize=12)
    return _save(figure, out)


# --- the journal through an outage --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class _Server:
    """`mlflow server` on 127.0.0.1, stopped and started again on the same port and store."""

    def __init__(self, folder: Path):
        self.port, self.folder, self.proc = _free_port(), folder, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.folder}/server.db", "--workers", "1",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while not _answers(self.uri):
            if time.monotonic() > deadline:
                raise SystemExit("mlflow server did not start in 120 s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            self.proc.wait(timeout=60)
        while _answers(self.uri):
            time.sleep(0.1)


def journal(out: Path, run_for_s: float = 32.0, down_at_s: float = 5.0, up_at_s: float = 12.0) -> Path:
    """Log one metrics record every 0.5 s through a real RunLog to a real `mlflow server`; another thread
    stops the server at down_at_s and starts it again at up_at_s. The journal on disk is sampled every
    50 ms (its lines, and its .delivered count), then plotted."""
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    from mlflow.tracking import MlflowClient

    from loaderlab.run_log import RunLog

    events: list[tuple[float, str]] = []
    samples: list[tuple[float, int, int]] = []  # t, records in the journal, records delivered

    class Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append((time.monotonic(), record.getMessage()))

    notes_handler = Notes(level=logging.WARNING)
    logging.getLogger("loaderlab.run_log").addHandler(notes_handler)
    with tempfile.TemporaryDirectory(prefix="loaderlab-journal-") as tmp:
        folder = Path(tmp)
        server = _Server(folder)
        server.start()
        client = MlflowClient(server.uri)
        run = client.create_run(client.create_experiment("journal-figure"), run_name="journal-figure")
        run_log = RunLog(server.uri, run.info.run_id, folder / "run", retry_s=1.0)
        path, offset = run_log.path, run_log.path.with_suffix(".delivered")
        start = time.monotonic()
        marks: dict[str, float] = {}
        done = threading.Event()

        def now() -> float:
            return time.monotonic() - start

        def sample() -> None:
            while not done.is_set():
                try:
                    written = max(0, len(path.read_text().splitlines()) - 1)
                except FileNotFoundError:  # delivered whole and removed
                    written = samples[-1][1]
                    samples.append((now(), written, written))
                    time.sleep(0.05)
                    continue
                try:
                    delivered = int(offset.read_text())
                except (OSError, ValueError):
                    delivered = 0
                samples.append((now(), written, delivered))
                time.sleep(0.05)

        def outage() -> None:
            time.sleep(down_at_s)
            marks["server stopped"] = now()
            server.stop()
            time.sleep(max(0.0, up_at_s - now()))
            marks["server restarted"] = now()
            server.start()
            marks["server answers again"] = now()

        threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=outage, daemon=True)]
        for thread in threads:
            thread.start()
        steps = 0
        try:
            while now() < run_for_s:
                run_log.metrics({"loss": 1.0 / (steps + 1)}, step=steps)
                steps += 1
                time.sleep(0.5)
            threads[1].join()
            marks["run ends: status appended"] = now()
            left = run_log.close("FINISHED", wait_s=60)
            marks["journal delivered and removed" if not left else "records kept"] = now()
            time.sleep(0.3)
        finally:
            done.set()
            threads[0].join()
            server.stop()
            logging.getLogger("loaderlab.run_log").removeHandler(notes_handler)
    notes = [(t - start, message) for t, message in events]
    print(f"journal: {steps} records; {marks}; log lines: {[m for _, m in notes]}")
    return _plot_journal(out, samples, marks, notes, steps)


def _plot_journal(out: Path, samples, marks: dict[str, float], notes, steps: int) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(11, 5.6))
    t = [s[0] for s in samples]
    axes.step(t, [s[1] for s in samples], where="post", label="records in the journal (appended by the job)",
              color="#1f77b4", linewidth=2)  # fmt: skip
    axes.step(t, [s[2] for s in samples], where="post", label="records delivered to the server",
              color="#2ca02c", linewidth=2)  # fmt: skip
    if "server stopped" in marks and "server answers again" in marks:
        axes.axvspan(marks["server stopped"], marks["server answers again"], color="#d62728", alpha=0.12,
                     label="tracking server away")  # fmt: skip
    top = max(s[1] for s in samples) + 2
    for i, (name, when) in enumerate(sorted(marks.items(), key=lambda kv: kv[1])):
        axes.axvline(when, color="#555555", linewidth=0.8, linestyle=":")
        axes.text(when, top * (1.0 - 0.06 * i), f" {name} ({when:.1f} s)", fontsize=8.4, va="top")
    for when, message in notes:
        if "does not answer" in message or "does not take" in message:
            text = "log: the server does not answer;\ntraining goes on"
        elif "is back" in message:
            text = "log: the server is back;\ndelivering what waited"
        else:
            continue
        axes.annotate(text, (when, 0), xytext=(when, -top * 0.2), fontsize=8, ha="center", va="top",
                      arrowprops={"arrowstyle": "-", "color": "#999999"}, annotation_clip=False)  # fmt: skip
    axes.set_ylim(-0.02 * top, top * 1.02)
    axes.set_xlabel("seconds since the run began", labelpad=34)
    axes.set_ylabel("records")
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, 0.8), fontsize=8.5)
    axes.set_title(
        "A run's journal through a tracking-server outage: a real RunLog against a real mlflow server\n"
        f"({steps} metric records, one every 0.5 s; MLflow's own retries off; {time.strftime('%Y-%m-%d')})",
        fontsize=11,
    )
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, out)


# --- the showcase: a real run's curves ----------------------------------------------------------------


def latest_default_run(uri: str = STORE, experiment: str = "loaderlab") -> str:
    """The most recent FINISHED run of the experiment that trained tfdata + small_cnn on the synthetic set
    with at most trainer.verbose changed: the README's `python src/train.py`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"No experiment {experiment!r} in {uri}: run python src/train.py first.")
    runs = client.search_runs(
        [found.experiment_id],
        "attributes.status = 'FINISHED' and tags.loader = 'tfdata' and tags.model = 'small_cnn' "
        "and tags.dataset = 'synthetic' and tags.sweep_id = 'none'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        overrides = [
            o for o in run.data.tags.get("hydra_overrides", "").split() if not o.startswith("trainer.verbose")
        ]
        if not overrides:
            return run.info.run_id
    raise SystemExit(f"No finished default run in {uri}: run python src/train.py first.")


def showcase(out: Path, run_id: str | None = None, uri: str = STORE) -> Path:
    """Loss and accuracy per epoch, and the run's summary figures, read with MlflowClient."""
    from mlflow.tracking import MlflowClient

    plt = _pyplot()
    client = MlflowClient(uri)
    run_id = run_id or latest_default_run(uri)
    run = client.get_run(run_id)

    def history(key: str) -> tuple[list[int], list[float]]:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.step + 1 for m in points], [m.value for m in points]

    figure, (left, middle, right) = plt.subplots(
        1, 3, figsize=(14, 4.3), gridspec_kw={"width_ratios": [1, 1, 0.8]}
    )
    for axes, key, title in ((left, "loss", "loss (cross-entropy)"), (middle, "accuracy", "accuracy")):
        for name, colour, style in ((key, "#1f77b4", "-"), (f"val_{key}", "#d62728", "-")):
            epochs, values = history(name)
            axes.plot(epochs, values, style, marker="o", color=colour, label=name, linewidth=2)
        axes.set_xlabel("epoch")
        axes.set_title(f"{title} per epoch")
        axes.legend(fontsize=9)
        axes.grid(alpha=0.3)
        axes.spines[["top", "right"]].set_visible(False)
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    right.axis("off")
    lines = [
        ("peak_rss_mb", f"{metrics.get('peak_rss_mb', float('nan')):,.0f} MB"),
        ("baseline_rss_mb", f"{metrics.get('baseline_rss_mb', float('nan')):,.0f} MB"),
        ("images_per_sec", f"{metrics.get('images_per_sec', float('nan')):,.0f}"),
        ("time_to_first_batch_s", f"{metrics.get('time_to_first_batch_s', float('nan')):.2f} s"),
        ("best_val_loss", f"{metrics.get('best_val_loss', float('nan')):.3f}"),
        ("val_accuracy (last)", f"{metrics.get('val_accuracy', float('nan')):.3f}"),
    ]
    right.text(
        0.0, 0.98, "what the run logged", fontsize=11, weight="bold", va="top", transform=right.transAxes
    )
    for i, (name, value) in enumerate(lines):
        y = 0.86 - 0.1 * i
        right.text(0.0, y, name, fontsize=10, family="monospace", transform=right.transAxes)
        right.text(1.0, y, value, fontsize=10, ha="right", transform=right.transAxes)
    right.text(
        0.0, 0.2,
        f"loader {tags.get('loader')}, model {tags.get('model')}, {params.get('data.num_images')} images,\n"
        f"{params.get('model.input_size')} px, batch {params.get('batch.train')}, {tags.get('device')}",
        fontsize=9, color="#444444", transform=right.transAxes, va="top",
    )  # fmt: skip
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
    figure.suptitle(f"python src/train.py: MLflow run {run_id[:8]} ({started})", fontsize=12, weight="bold")
    figure.tight_layout()
    print(f"showcase: run {run_id} of {uri}")
    return _save(figure, out)


# --- the command line ---------------------------------------------------------------------------------


def _save(figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, bbox_inches="tight")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python docs/figures/make_figures.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("figure", choices=["decision", "ratios", "pack", "journal", "showcase", "all"])
    parser.add_argument("--results", type=Path, default=None, help="ratios: a benchmark results JSON; "
                        "default: the most recent complete one in outputs/benchmarks/")  # fmt: skip
    parser.add_argument("--run-id", default=None, help="showcase: the run; default: the latest default run")
    parser.add_argument("--tracking-uri", default=STORE, help="showcase: the store (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=None, help="the PNG (one figure); default docs/figures/<name>.png"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = ["decision", "ratios", "pack", "journal", "showcase"] if args.figure == "all" else [args.figure]
    for name in names:
        out = args.out if args.out and len(names) == 1 else HERE / f"{name}.png"
        if name == "ratios":
            ratios(out, args.results)
        elif name == "showcase":
            showcase(out, args.run_id, args.tracking_uri)
        else:
            globals()[name](out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
