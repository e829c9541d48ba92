"""Compare the jobs of one sweep: a table and a PNG chart from MLflow, the chart logged on the parent run."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from loaderlab import PROJECT_ROOT
from loaderlab.monitor import MB

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"
DEFAULT_EXPERIMENT = "loaderlab"
DEFAULT_OUT = PROJECT_ROOT / "outputs" / "reports"
SWEEP_HINT = "python src/train.py -m loader=inmemory,generator,sequence,tfdata"

NA = "n/a"
LOADER_COLORS = {"inmemory": "#d62728", "generator": "#1f77b4", "sequence": "#2ca02c", "tfdata": "#ff7f0e"}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# The summary metrics shown as columns, with their decimals. gpu_peak_mb exists only where a GPU did.
METRIC_COLUMNS = {
    "peak_rss_mb": 1,
    "baseline_rss_mb": 1,
    "gpu_peak_mb": 1,
    "images_per_sec": 1,
    "time_to_first_batch_s": 2,
    "best_val_loss": 4,
}
BATCH_PARAMS = ("batch.train", "batch.val")  # shown in their own column
IDENTITY_TAGS = ("loader", "model", "dataset")
# A param under one of these prefixes follows from the tag when it is constant for each tag value.
GROUP_TAGS = {"loader.": "loader", "model.": "model", "data.": "dataset"}
IGNORED_PREFIXES = ("paths.", "hydra.")  # differ per job by construction (e.g. paths.output_dir)
SCALING_PARAM = "data.num_images"
# The MLflow UI (3.x) keeps its runs-table and chart settings in the browser; a view saved as this experiment
# tag is opened by anyone with ?viewStateShareKey=<key>. The state's shape is the UI's own (checked by
# tests/test_mlflow_ui.py against the pinned MLflow).
UI_VIEW_TAG = "mlflow.sharedViewState."
UI_RUN_COLOR_TAG = "mlflow.runColor"
UI_RUN_NAME_COLUMN = "attributes.`Run Name`"
UI_DEFAULT_BASE = "http://127.0.0.1:5000"
UI_BAR_METRICS = ("peak_rss_mb", "images_per_sec", "time_to_first_batch_s", "best_val_loss", "gpu_peak_mb")


class ReportError(RuntimeError):
    """Something the user must fix (no store, no sweep, unknown sweep id); printed without a traceback."""


@dataclass
class Sweep:
    """A sweep's parent run and its jobs (child runs), oldest job first."""

    parent: Run
    children: list[Run]
    experiment_id: str

    @property
    def sweep_id(self) -> str:
        """The sweep's id, e.g. '2026-11-25_15-12-22'."""
        return self.parent.data.tags.get("sweep_id", self.parent.info.run_id)


@dataclass
class Table:
    """One row per job, every cell already formatted."""

    headers: list[str]
    rows: list[list[str]]

    def column(self, header: str) -> list[str]:
        """The cells of one column, top to bottom."""
        index = self.headers.index(header)
        return [row[index] for row in self.rows]

    def render(self) -> str:
        """The table as aligned text: words left, numbers right."""
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) for i, h in enumerate(self.headers)]
        numeric = [all(_is_number(r[i]) or r[i] == NA for r in self.rows) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers), rule, *(line(r) for r in self.rows)])


@dataclass
class Report:
    """What `python src/compare.py` produced: the sweep, its table, the chart and where it was logged."""

    sweep: Sweep
    table: Table
    chart: Path
    artifact_path: str
    errors: list[str]
    ui_view: str | None = None

    def render(self, tracking_uri: str) -> str:
        """The full text printed by the command line."""
        parent = self.sweep.parent
        lines = [
            f"Sweep {self.sweep.sweep_id}: {len(self.sweep.children)} job(s), parent run "
            f"{parent.info.run_id} ({parent.info.status}), store {tracking_uri}",
            "",
            self.table.render(),
        ]
        if self.errors:
            lines += ["", *self.errors]
        lines += ["", f"Chart: {self.chart}", f"Logged on the parent run as {self.artifact_path}"]
        if self.ui_view:
            table_url = ui_url(tracking_uri, self.sweep.experiment_id, self.ui_view)
            chart_url = ui_url(tracking_uri, self.sweep.experiment_id, self.ui_view, charts=True)
            lines += ["", "In the MLflow UI, this sweep's jobs side by side:", f"  table:  {table_url}"]
            lines += [f"  charts: {chart_url}"]
            if not tracking_uri.startswith(("http://", "https://")):
                lines.append(f"  (first start the UI: mlflow ui --backend-store-uri {tracking_uri})")
        return "\n".join(lines)


def open_store(uri: str) -> MlflowClient:
    """A client for an existing store; a missing SQLite file or a silent server is a ReportError."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportError(f"No MLflow store at {path}. Run a sweep first: {SWEEP_HINT}")
    elif uri.startswith(("http://", "https://")):
        from loaderlab.tracking import TrackingUnavailableError, check_reachable

        try:
            check_reachable(uri)
        except TrackingUnavailableError as e:  # unreachable, or refusing the credentials
            raise ReportError(
                f"{e} Or pass another --tracking-uri (the default is the project's store, "
                f"{DEFAULT_TRACKING_URI})."
            ) from None
    elif "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise ReportError(f"No MLflow store at {path}. Run a sweep first: {SWEEP_HINT}")
    return MlflowClient(uri)


def find_sweep(client: MlflowClient, experiment: str, sweep_id: str | None = None) -> Sweep:
    """The newest sweep of the experiment, or the one named by sweep_id, with its jobs."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ReportError(
            f"No experiment '{experiment}' in {client.tracking_uri} (experiments there: {names}). "
            "Pass --experiment, or run a sweep first: " + SWEEP_HINT
        )
    experiment_id = found.experiment_id
    sweeps = "tags.role = 'sweep'"
    if sweep_id is None:
        parents = client.search_runs(
            [experiment_id], sweeps, order_by=["attributes.start_time DESC"], max_results=1
        )
        if not parents:
            raise ReportError(
                f"No sweep in experiment '{experiment}' at {client.tracking_uri}. Run one first: {SWEEP_HINT}"
            )
    else:
        quoted = sweep_id.replace("'", "\\'")
        parents = client.search_runs(
            [experiment_id],
            f"{sweeps} and tags.sweep_id = '{quoted}'",
            order_by=["attributes.start_time DESC"],
        )
        if not parents:
            recent = client.search_runs(
                [experiment_id], sweeps, order_by=["attributes.start_time DESC"], max_results=5
            )
            known = ", ".join(r.data.tags.get("sweep_id", "?") for r in recent) or "none"
            raise ReportError(
                f"No sweep '{sweep_id}' in experiment '{experiment}' at {client.tracking_uri}. "
                f"Recent sweeps: {known}."
            )
    parent = parents[0]
    children = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )
    sweep = Sweep(parent, children, experiment_id)
    if not children:
        raise ReportError(f"Sweep {sweep.sweep_id} (run {parent.info.run_id}) has no jobs logged yet.")
    return sweep


def swept_keys(children: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between jobs, read from their `hydra_overrides` tags."""
    per_job = [_parse_overrides(c.data.tags.get("hydra_overrides", "")) for c in children]
    keys = list(dict.fromkeys(k for job in per_job for k in job))
    return [k for k in keys if len({job.get(k) for job in per_job}) > 1]


def varied_params(children: Sequence[Run]) -> list[str]:
    """Params that differ between jobs and are not implied by the loader/model/dataset or batch columns."""
    keys = sorted({k for c in children for k in c.data.params})
    differing = [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES)
        and k not in BATCH_PARAMS
        and len({c.data.params.get(k) for c in children}) > 1
    ]
    swept = [k for k in swept_keys(children) if k in differing]
    varied = list(swept)
    for key in differing:
        if key in swept:
            continue
        tags = [tag for prefix, tag in GROUP_TAGS.items() if key.startswith(prefix)]
        determinants: list[Callable[[Run], str | None]] = [
            *(lambda r, k=k: r.data.params.get(k) for k in swept),
            *(lambda r, t=t: r.data.tags.get(t) for t in tags),
        ]
        if determinants and _follows_from(children, key, determinants):
            continue  # e.g. loader.workers under loader=..., or data.root under data.num_images=...
        varied.append(key)
    return varied


def build_table(sweep: Sweep) -> Table:
    """The comparison table: identity, varied params, batch sizes, status and the summary metrics."""
    varied = varied_params(sweep.children)
    headers = ["loader", "model", *varied, "batch", "status", *METRIC_COLUMNS]
    rows = []
    for run in sweep.children:
        params, metrics = run.data.params, run.data.metrics
        batch = f"{params.get('batch.train', '?')}/{params.get('batch.val', '?')}"
        cells = [run.data.tags.get("loader", "?"), run.data.tags.get("model", "?")]
        cells += [params.get(k, NA) for k in varied]
        cells += [batch, run.info.status]
        cells += [_fmt(metrics.get(name), digits) for name, digits in METRIC_COLUMNS.items()]
        rows.append(cells)
    return Table(headers, rows)


def error_lines(sweep: Sweep) -> list[str]:
    """One line per job that did not finish, with its recorded error."""
    lines = []
    for run in sweep.children:
        if run.info.status != "FINISHED":
            error = run.data.tags.get("error", "no error recorded")
            error = error if len(error) <= 300 else error[:297] + "..."
            lines.append(f"{run.info.run_name} ({run.info.run_id[:8]}) {run.info.status}: {error}")
    return lines


def plot_sweep(client: MlflowClient, sweep: Sweep, path: Path) -> Path:
    """Draw the sweep's chart to a PNG: memory, throughput and val_loss by loader (or vs dataset size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    children = sweep.children
    varied = varied_params(children)
    scaling = SCALING_PARAM in varied and len(_numbers(children, SCALING_PARAM)) >= 2
    label_of = _labeller(children, varied, leave_out=SCALING_PARAM if scaling else None)
    color_of = _colours([r.data.tags.get("loader", "?") for r in children])
    history = {
        r.info.run_id: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
        for r in children
    }
    draw_val_loss = any(len(points) >= 2 for points in history.values()) or (
        not scaling and any(history.values())
    )
    panels: list[Callable] = (
        [_memory_vs_images, _added_memory_vs_images, _throughput_vs_images]
        if scaling
        else [_memory_bars, _throughput_bars]
    )
    fig, axes = plt.subplots(
        1, len(panels) + draw_val_loss, figsize=(5.6 * (len(panels) + draw_val_loss), 5.0), squeeze=False
    )
    axes = list(axes[0])
    for ax, panel in zip(axes, panels, strict=False):
        panel(ax, children, label_of, color_of)
    if draw_val_loss:
        _val_loss_lines(axes[-1], children, history, label_of, color_of)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(_title(sweep, varied), fontsize=13, fontweight="bold")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_chart(client: MlflowClient, sweep: Sweep, chart: Path) -> str:
    """Log the chart on the sweep's parent run under reports/; return its artifact path."""
    client.log_artifact(sweep.parent.info.run_id, str(chart), artifact_path="reports")
    return f"reports/{chart.name}"


def make_report(
    tracking_uri: str = DEFAULT_TRACKING_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    sweep_id: str | None = None,
    out: Path = DEFAULT_OUT,
) -> Report:
    """Find the sweep; build its table; draw, save and log its chart; save its MLflow UI view."""
    client = open_store(tracking_uri)
    sweep = find_sweep(client, experiment, sweep_id)
    table = build_table(sweep)
    chart = plot_sweep(client, sweep, Path(out) / f"{_safe_name(sweep.sweep_id)}.png")
    artifact_path = log_chart(client, sweep, chart)
    ui_view = save_ui_view(client, sweep)
    return Report(sweep, table, chart, artifact_path, error_lines(sweep), ui_view)


def ui_view_state(sweep: Sweep) -> dict:
    """The MLflow UI's runs-page state for one sweep: its runs grouped, the contract's metrics as columns."""
    children = sweep.children
    varied = varied_params(children)
    logged = {name for run in children for name in run.data.metrics}
    metrics = [m for m in METRIC_COLUMNS if m in logged]
    columns = [
        "tags.`loader`",
        *(f"params.`{k}`" for k in varied),
        *(f"params.`{k}`" for k in BATCH_PARAMS),
        *(f"metrics.`{m}`" for m in metrics),
    ]
    section = "loaderlab"
    charts: list[dict] = [
        {**_ui_chart(section, f"bar-{m}", "BAR"), "metricKey": m, "displayName": m}
        for m in UI_BAR_METRICS
        if m in logged
    ]
    if SCALING_PARAM in varied:
        charts.insert(
            1,
            {
                **_ui_chart(section, "scatter-peak-vs-images", "SCATTER"),
                "xaxis": {"key": SCALING_PARAM, "type": "PARAM"},
                "yaxis": {"key": "peak_rss_mb", "type": "METRIC"},
                "displayName": "peak_rss_mb vs data.num_images",
            },
        )
    if "val_loss" in logged and any(r.data.params.get("trainer.epochs", "2") != "1" for r in children):
        charts.append(
            {
                **_ui_chart(section, "line-val_loss", "LINE"),
                "metricKey": "val_loss",
                "selectedMetricKeys": ["val_loss"],
                "displayName": "val_loss per epoch",
                "lineSmoothness": 0,
                "xAxisScaleType": "linear",
                "scaleType": "linear",
                "range": {},
                "xAxisKey": "step",
                "selectedXAxisMetricKey": "",
                "yAxisKey": "metric",
                "yAxisExpressions": [],
                "ignoreOutliers": False,
                "useGlobalXaxisKey": True,
                "useGlobalLineSmoothing": True,
            }
        )
    return {
        "searchFilter": f"tags.sweep_id = '{sweep.sweep_id}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": [UI_RUN_NAME_COLUMN, *columns],  # the UI applies widths to the columns listed here
        "columnWidths": {UI_RUN_NAME_COLUMN: 250}
        | {c: 150 if c.startswith("metrics.") else 130 for c in columns},
        # Grouping by the sweep shows the parent and all its jobs as rows (nested runs start collapsed).
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "sweep_id"}],
        },
        "useGroupedValuesInCharts": False,
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "loaderlab: what each loader costs",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            },
        ],
        "isAccordionReordered": True,
    }


def save_ui_view(client: MlflowClient, sweep: Sweep) -> str:
    """Save the sweep's MLflow UI view as an experiment tag and colour its jobs by loader; return its key."""
    key = f"loaderlab-{_safe_name(sweep.sweep_id)}"
    client.set_experiment_tag(sweep.experiment_id, UI_VIEW_TAG + key, json.dumps(ui_view_state(sweep)))
    colour_of = _colours([r.data.tags.get("loader", "?") for r in sweep.children])
    for run in sweep.children:  # the UI's run colour, as in the PNG chart
        if UI_RUN_COLOR_TAG not in run.data.tags:
            client.set_tag(run.info.run_id, UI_RUN_COLOR_TAG, colour_of(run))
    return key


def ui_url(tracking_uri: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The MLflow UI address of a saved view: the server itself, or `mlflow ui`'s default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_DEFAULT_BASE
    query = f"workflowType=machine_learning&viewStateShareKey={key}" + (
        "&compareRunsMode=CHART" if charts else ""
    )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


# --- chart panels ----------------------------------------------------------------------------------


def _memory_bars(ax, children: Sequence[Run], label_of, color_of) -> None:
    """Peak RSS per job as a bar: the grey part is the baseline, the coloured part what the run added."""
    x = range(len(children))
    for i, run in enumerate(children):
        peak, base = run.data.metrics.get("peak_rss_mb"), run.data.metrics.get("baseline_rss_mb")
        if peak is None:
            _failed_marker(ax, i, run)
            continue
        base = min(base, peak) if base is not None else 0.0
        ax.bar(i, base, color="#d9d9d9", edgecolor="#999999", hatch="//", width=0.7)
        ax.bar(i, peak - base, bottom=base, color=color_of(run), width=0.7)
        ax.annotate(
            f"{peak:,.0f}\n(+{peak - base:,.0f})",
            (i, peak),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(list(x), [label_of(r) for r in children])
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(
        "Peak host memory by loader\n(grey: baseline before the data pipeline; +N: what the run added)",
        fontsize=11,
    )
    ax.margins(y=0.15)


def _throughput_bars(ax, children: Sequence[Run], label_of, color_of) -> None:
    """Steady-state training throughput per job, one bar each."""
    for i, run in enumerate(children):
        rate = run.data.metrics.get("images_per_sec")
        if rate is None:
            _failed_marker(ax, i, run)
            continue
        ax.bar(i, rate, color=color_of(run), width=0.7)
        ax.annotate(
            f"{rate:,.0f}", (i, rate), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9
        )
    ax.set_xticks(list(range(len(children))), [label_of(r) for r in children])
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Training throughput by loader\n(steady state, first epoch left out)", fontsize=11)
    ax.margins(y=0.12)


def _memory_vs_images(ax, children: Sequence[Run], label_of, color_of) -> None:
    """Peak RSS against the number of images, one line per loader."""
    _lines_vs_images(ax, children, lambda r: r.data.metrics.get("peak_rss_mb"), label_of, color_of)
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("Peak host memory vs dataset size\n(flat = streaming works)", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylim(bottom=0)


def _added_memory_vs_images(ax, children: Sequence[Run], label_of, color_of) -> None:
    """Peak minus baseline RSS against the number of images, with the all-images uint8 array as reference."""
    _lines_vs_images(ax, children, _added_mb, label_of, color_of)
    sizes = sorted(_numbers(children, SCALING_PARAM))
    if (image_bytes := _image_bytes(children[0])) and sizes:
        (reference,) = ax.plot(
            sizes,
            [n * image_bytes / MB for n in sizes],
            linestyle="--",
            color="#555555",
            linewidth=1.2,
            label="all images decoded as one uint8 array",
        )
        ax.annotate(
            f"{sizes[-1] * image_bytes / MB:,.0f} MB",
            (sizes[-1], sizes[-1] * image_bytes / MB),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
            color="#555555",
        )
        ax.legend(handles=[reference], fontsize=8, frameon=False)  # the loaders' colours: first panel
    ax.set_ylabel("peak - baseline RSS (MB)")
    ax.set_title("Memory the run added vs dataset size\n(baseline: before the data pipeline)", fontsize=11)
    ax.set_ylim(bottom=0)


def _throughput_vs_images(ax, children: Sequence[Run], label_of, color_of) -> None:
    """Throughput against the number of images, one line per loader."""
    _lines_vs_images(ax, children, lambda r: r.data.metrics.get("images_per_sec"), label_of, color_of)
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Training throughput vs dataset size", fontsize=11)
    ax.set_ylim(bottom=0)


def _lines_vs_images(
    ax, children: Sequence[Run], value: Callable[[Run], float | None], label_of, color_of
) -> None:
    """One line per label over data.num_images (log x axis); jobs without a value marked with a red x."""
    from matplotlib.ticker import FixedLocator, NullLocator

    groups: dict[str, list[Run]] = {}
    for run in children:
        if _is_number(run.data.params.get(SCALING_PARAM)):
            groups.setdefault(label_of(run), []).append(run)
    for label, runs in groups.items():
        points = sorted((float(r.data.params[SCALING_PARAM]), y) for r in runs if (y := value(r)) is not None)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=color_of(runs[0]), label=label, linewidth=2)
        for run in runs:
            if value(run) is None:
                x = float(run.data.params[SCALING_PARAM])
                ax.plot([x], [0], marker="x", color="#d62728", markersize=10, clip_on=False)
                ax.annotate(
                    f"{run.data.tags.get('loader', '?')}\n{run.info.status.lower()}",
                    (x, 0),
                    xytext=(0, 8),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    color="#d62728",
                )
    sizes = sorted(_numbers(children, SCALING_PARAM))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{n:,.0f}" for n in sizes])
    ax.set_xlabel("number of images (data.num_images, log scale)")
    ax.margins(x=0.08, y=0.1)


def _added_mb(run: Run) -> float | None:
    """What the run added to the process's memory: peak minus baseline RSS, in MB."""
    peak, base = run.data.metrics.get("peak_rss_mb"), run.data.metrics.get("baseline_rss_mb")
    return None if peak is None or base is None else max(peak - base, 0.0)


def _val_loss_lines(ax, children: Sequence[Run], history, label_of, color_of) -> None:
    """val_loss per epoch, one line per job."""
    for run in children:
        points = history.get(run.info.run_id) or []
        if points:
            ax.plot(
                [step + 1 for step, _ in points],  # logged with step = epoch index, from 0
                [value for _, value in points],
                marker="o",
                color=color_of(run),
                label=label_of(run).replace("\n", " "),
                linewidth=2,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title("Validation loss per epoch", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no val_loss logged", transform=ax.transAxes, ha="center", color="#777777")


def _ui_chart(section: str, uuid: str, kind: str) -> dict:
    """The fields every chart card of the MLflow UI has."""
    return {
        "uuid": f"loaderlab-{uuid}",
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
    }


def _failed_marker(ax, i: int, run: Run) -> None:
    """Write the job's status where its bar would stand."""
    ax.annotate(
        run.info.status,
        (i, 0),
        xytext=(0, 4),
        textcoords="offset points",
        ha="center",
        va="bottom",
        rotation=90,
        color="#d62728",
        fontweight="bold",
    )


# --- helpers ---------------------------------------------------------------------------------------


def _title(sweep: Sweep, varied: Sequence[str]) -> str:
    """'Sweep <id>' and what all its jobs share, e.g. 'small_cnn, 400 images, input 32 px, CPU'."""
    children = sweep.children

    def shared(get: Callable[[Run], str | None]) -> str | None:
        values = {get(r) for r in children}
        return values.pop() if len(values) == 1 else None

    parts = []
    if model := shared(lambda r: r.data.tags.get("model")):
        parts.append(model)
    if SCALING_PARAM not in varied and (n := shared(lambda r: r.data.params.get(SCALING_PARAM))):
        parts.append(f"{int(float(n)):,} images" if _is_number(n) else f"{n} images")
    if size := shared(lambda r: r.data.params.get("model.input_size")):
        parts.append(f"input {size} px")
    if batch := shared(lambda r: r.data.params.get("batch.train")):
        parts.append(f"batch {batch}")
    if epochs := shared(lambda r: r.data.params.get("trainer.epochs")):
        parts.append(f"{epochs} epoch{'s' if epochs != '1' else ''}")
    if device := shared(lambda r: r.data.tags.get("device")):
        parts.append(device)
    return f"Sweep {sweep.sweep_id}" + (f": {', '.join(parts)}" if parts else "")


def _labeller(children: Sequence[Run], varied: Sequence[str], leave_out: str | None) -> Callable[[Run], str]:
    """A short label per job: the loader, plus whatever else differs between jobs."""
    tags = [t for t in IDENTITY_TAGS[1:] if len({r.data.tags.get(t) for r in children}) > 1]
    params = [k for k in (*varied, *BATCH_PARAMS) if k != leave_out]
    params = [k for k in params if len({r.data.params.get(k) for r in children}) > 1]

    def label(run: Run) -> str:
        parts = [run.data.tags.get("loader", "?"), *(run.data.tags.get(t, "?") for t in tags)]
        parts += [f"{k.rsplit('.', 1)[-1]}={run.data.params.get(k, NA)}" for k in params]
        return "\n".join(parts)

    return label


def _colours(loaders: Iterable[str]) -> Callable[[Run], str]:
    """The same colour for a loader in every panel (and every report)."""
    mapping = dict(LOADER_COLORS)
    extra = iter(OTHER_COLORS * 10)
    for loader in loaders:
        if loader not in mapping:
            mapping[loader] = next(extra)
    return lambda run: mapping[run.data.tags.get("loader", "?")]


def _follows_from(children: Sequence[Run], key: str, determinants: Sequence[Callable]) -> bool:
    """Whether the param's value is the same wherever the determinants' values are."""
    seen: dict[tuple, str | None] = {}
    for run in children:
        signature = tuple(get(run) for get in determinants)
        value = run.data.params.get(key)
        if seen.setdefault(signature, value) != value:
            return False
    return True


def _parse_overrides(text: str) -> dict[str, str]:
    """'loader=tfdata data.num_images=400' -> {'loader': 'tfdata', 'data.num_images': '400'}."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    pairs = (token.split("=", 1) for token in tokens if "=" in token)
    return {key.lstrip("+~"): value for key, value in pairs}


def _image_bytes(run: Run) -> int | None:
    """Bytes of one decoded uint8 image at the model's input size, from the run's params."""
    size = re.findall(r"\d+", run.data.params.get("model.input_size", ""))
    channels = run.data.params.get("data.channels", "3")
    if not size or not channels.isdigit():
        return None
    height, width = (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))
    return height * width * int(channels)


def _numbers(children: Sequence[Run], key: str) -> set[float]:
    """The distinct numeric values of a param among the jobs."""
    return {float(v) for r in children if _is_number(v := r.data.params.get(key, ""))}


def _is_number(text: str | None) -> bool:
    """Whether a string reads as a finite number (commas allowed)."""
    try:
        return math.isfinite(float(str(text).replace(",", "")))
    except ValueError:
        return False


def _fmt(value: float | None, digits: int) -> str:
    """A metric for the table: 'n/a' when it was not logged."""
    if value is None or not math.isfinite(value):
        return NA
    return f"{value:.{digits}f}"


def _safe_name(text: str) -> str:
    """A file name from a sweep id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "sweep"
