"""Compare the jobs of one sweep, or an experiment's runs: read them from MLflow, tabulate, chart, and
open them in the MLflow UI.

store.py reads the runs, table.py builds the table, chart.py draws the PNG, ui_view.py the UI view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loaderlab.report.chart import draw_chart, loader_colours
from loaderlab.report.store import (
    ReportError,
    Runs,
    Selection,
    Sweep,
    column,
    find_runs,
    find_sweep,
    open_store,
)
from loaderlab.report.table import NA, Table, build_table, error_lines, varied_params
from loaderlab.report.ui_view import filtered_url, safe_name, save_view, ui_url
from loaderlab.utils.paths import DEFAULT_TRACKING_URI, OUTPUTS

DEFAULT_EXPERIMENT = "loaderlab"
DEFAULT_OUT = OUTPUTS / "reports"

__all__ = [
    "DEFAULT_EXPERIMENT", "DEFAULT_OUT", "DEFAULT_TRACKING_URI", "NA", "Report", "ReportError", "Runs",
    "Selection", "Sweep", "Table", "build_table", "find_runs", "find_sweep", "make_report", "open_store",
    "ui_url", "varied_params",
]  # fmt: skip


@dataclass
class Report:
    """What `python src/compare.py` produced: the runs, their table, the chart and where it was logged."""

    sweep: Selection  # a Sweep, or Runs (an experiment's last N or all, with no parent run)
    table: Table
    chart: Path
    artifact_path: str | None  # None: the chart is in --out only
    errors: list[str]
    ui_view: str | None = None

    def render(self, tracking_uri: str) -> str:
        """The full text printed by the command line."""
        selection = self.sweep
        if isinstance(selection, Sweep):
            parent = selection.parent
            head = (
                f"Sweep {selection.sweep_id}: {len(selection.jobs)} job(s), parent run "
                f"{parent.info.run_id} ({parent.info.status}), store {tracking_uri}"
            )
        else:
            asked = "" if selection.last in (None, len(selection.jobs)) else f" ({selection.last} asked)"
            head = f"{selection.title}{asked}, store {tracking_uri}"
        lines = [head, "", self.table.render()]
        if self.errors:
            lines += ["", *self.errors]
        lines += ["", f"Chart: {self.chart}"]
        if self.artifact_path:
            lines.append(f"Logged on the parent run as {self.artifact_path}")
        else:
            lines.append("Not logged to MLflow: these runs are no sweep, so no parent run holds the chart.")
        which = "this sweep's jobs" if isinstance(selection, Sweep) else "these runs"
        lines += ["", f"In the MLflow UI, {which} side by side:"]
        if self.ui_view:
            experiment_id = selection.experiment_id
            lines.append(f"  table:  {ui_url(tracking_uri, experiment_id, self.ui_view)}")
            lines.append(f"  charts: {ui_url(tracking_uri, experiment_id, self.ui_view, charts=True)}")
        else:  # runs, or an MLflow whose UI state format is untested: the filtered runs page
            lines.append(f"  runs:   {filtered_url(tracking_uri, selection)}")
        if not tracking_uri.startswith(("http://", "https://")):
            lines.append(f"  (first start the UI: mlflow ui --backend-store-uri {tracking_uri})")
        return "\n".join(lines)


def make_report(
    tracking_uri: str = DEFAULT_TRACKING_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    sweep_id: str | None = None,
    out: Path = DEFAULT_OUT,
    last: int | None = None,
    all_runs: bool = False,
) -> Report:
    """Find the sweep (or, with `last` or `all_runs`, the experiment's runs); build the table; draw and
    save the chart, and log it and the MLflow UI view on a sweep (runs have no parent: --out only)."""
    import matplotlib.pyplot as plt

    client = open_store(tracking_uri)
    if last is not None or all_runs:
        selection: Selection = find_runs(client, experiment, last)
    else:
        selection = find_sweep(client, experiment, sweep_id)
    figure = draw_chart(client, selection)
    chart = Path(out) / f"{safe_name(selection.name)}.png"
    chart.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(chart, dpi=120)
    artifact_path = ui_view = None
    if isinstance(selection, Sweep):
        artifact_path = f"reports/{chart.name}"
        client.log_figure(selection.parent.info.run_id, figure, artifact_path, save_kwargs={"dpi": 120})
        colours = loader_colours(column(selection.jobs, "tags.loader").fillna("?").tolist())
        ui_view = save_view(client, selection, colours)
    plt.close(figure)
    return Report(selection, build_table(selection), chart, artifact_path, error_lines(selection), ui_view)
