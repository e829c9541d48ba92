"""Compare the jobs of one sweep: read them from MLflow, tabulate, chart, and open them in the MLflow UI.

store.py reads the sweep, table.py builds the table, chart.py draws the PNG, ui_view.py the UI view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loaderlab.report.chart import draw_chart, loader_colours
from loaderlab.report.store import ReportError, Sweep, column, find_sweep, open_store
from loaderlab.report.table import NA, Table, build_table, error_lines, varied_params
from loaderlab.report.ui_view import filtered_url, safe_name, save_view, ui_url
from loaderlab.utils.paths import DEFAULT_TRACKING_URI, OUTPUTS

DEFAULT_EXPERIMENT = "loaderlab"
DEFAULT_OUT = OUTPUTS / "reports"

__all__ = [
    "DEFAULT_EXPERIMENT", "DEFAULT_OUT", "DEFAULT_TRACKING_URI", "NA", "Report", "ReportError", "Sweep",
    "Table", "build_table", "find_sweep", "make_report", "open_store", "ui_url", "varied_params",
]  # fmt: skip


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
            f"Sweep {self.sweep.sweep_id}: {len(self.sweep.jobs)} job(s), parent run "
            f"{parent.info.run_id} ({parent.info.status}), store {tracking_uri}",
            "",
            self.table.render(),
        ]
        if self.errors:
            lines += ["", *self.errors]
        lines += ["", f"Chart: {self.chart}", f"Logged on the parent run as {self.artifact_path}", ""]
        lines.append("In the MLflow UI, this sweep's jobs side by side:")
        if self.ui_view:
            experiment_id = self.sweep.experiment_id
            lines.append(f"  table:  {ui_url(tracking_uri, experiment_id, self.ui_view)}")
            lines.append(f"  charts: {ui_url(tracking_uri, experiment_id, self.ui_view, charts=True)}")
        else:  # an MLflow whose UI state format is untested: the filtered runs page
            lines.append(f"  runs:   {filtered_url(tracking_uri, self.sweep)}")
        if not tracking_uri.startswith(("http://", "https://")):
            lines.append(f"  (first start the UI: mlflow ui --backend-store-uri {tracking_uri})")
        return "\n".join(lines)


def make_report(
    tracking_uri: str = DEFAULT_TRACKING_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    sweep_id: str | None = None,
    out: Path = DEFAULT_OUT,
) -> Report:
    """Find the sweep; build its table; draw, save and log its chart; save its MLflow UI view."""
    import matplotlib.pyplot as plt

    client = open_store(tracking_uri)
    sweep = find_sweep(client, experiment, sweep_id)
    figure = draw_chart(client, sweep)
    chart = Path(out) / f"{safe_name(sweep.sweep_id)}.png"
    chart.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(chart, dpi=120)
    artifact_path = f"reports/{chart.name}"
    client.log_figure(sweep.parent.info.run_id, figure, artifact_path, save_kwargs={"dpi": 120})
    plt.close(figure)
    colours = loader_colours(column(sweep.jobs, "tags.loader").fillna("?").tolist())
    ui_view = save_view(client, sweep, colours)
    return Report(sweep, build_table(sweep), chart, artifact_path, error_lines(sweep), ui_view)
