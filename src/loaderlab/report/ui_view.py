"""The sweep in the MLflow UI: a saved runs-page view where the UI's format is known, else a filtered link.

The saved view is the experiment tag `mlflow.sharedViewState.<key>`, which the UI opens with
`?viewStateShareKey=<key>`. Its JSON is the UI's internal browser state, not a public API: it is
written only for MLflow versions that tests/test_mlflow_ui.py has checked in headless Chromium.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import mlflow
from mlflow.tracking import MlflowClient

from loaderlab.report.store import Runs, Selection, Sweep, column
from loaderlab.report.table import BATCH_PARAMS, METRIC_COLUMNS, varied_params
from loaderlab.tracking import ui_base

TESTED_MLFLOW = ("3.17.",)  # version prefixes whose UI state the Chromium test covers
VIEW_TAG = "mlflow.sharedViewState."
RUN_COLOR_TAG = "mlflow.runColor"  # a public run tag: the UI's colour for the run
RUN_NAME_COLUMN = "attributes.`Run Name`"
BAR_METRICS = ("peak_rss_mb", "images_per_sec", "time_to_first_batch_s", "best_val_loss", "gpu_peak_mb")
SECTION = "loaderlab"


def view_supported(version: str = mlflow.__version__) -> bool:
    """Whether this MLflow's UI state format is the one the tests checked."""
    return version.startswith(TESTED_MLFLOW)


def view_state(sweep: Sweep) -> dict:
    """The MLflow UI's runs-page state for one sweep: its runs grouped, the contract's metrics as columns."""
    jobs = sweep.jobs
    varied = varied_params(jobs)
    logged = {c.removeprefix("metrics.") for c in jobs if c.startswith("metrics.") and jobs[c].notna().any()}
    metrics = [m for m in METRIC_COLUMNS if m in logged]
    columns = [
        "tags.`loader`",
        *(f"params.`{k}`" for k in varied),
        *(f"params.`{k}`" for k in BATCH_PARAMS),
        *(f"metrics.`{m}`" for m in metrics),
    ]
    charts = [
        {**_chart(f"bar-{m}", "BAR"), "metricKey": m, "displayName": m} for m in BAR_METRICS if m in logged
    ]
    if "data.num_images" in varied:
        charts.insert(1, {
            **_chart("scatter-peak-vs-images", "SCATTER"),
            "xaxis": {"key": "data.num_images", "type": "PARAM"},
            "yaxis": {"key": "peak_rss_mb", "type": "METRIC"},
            "displayName": "peak_rss_mb vs data.num_images",
        })  # fmt: skip
    if "val_loss" in logged and (column(jobs, "params.trainer.epochs").astype(str) != "1").any():
        charts.append({
            **_chart("line-val_loss", "LINE"), "metricKey": "val_loss", "selectedMetricKeys": ["val_loss"],
            "displayName": "val_loss per epoch", "lineSmoothness": 0, "xAxisScaleType": "linear",
            "scaleType": "linear", "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True,
        })  # fmt: skip
    return {
        "searchFilter": sweep_filter(sweep),
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],  # the UI applies widths to the columns listed here
        "columnWidths": {RUN_NAME_COLUMN: 250}
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
                "uuid": SECTION,
                "name": "loaderlab: what each loader costs",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],  # fmt: skip
        "isAccordionReordered": True,
    }


def save_view(client: MlflowClient, sweep: Sweep, colours: dict[str, str]) -> str | None:
    """Colour the jobs as in the PNG; save the view where supported and return its key (else None)."""
    for job in sweep.jobs.itertuples():
        tags = sweep.jobs.loc[job.Index]
        if pd_missing(tags.get(f"tags.{RUN_COLOR_TAG}")):
            client.set_tag(job.run_id, RUN_COLOR_TAG, colours.get(tags.get("tags.loader") or "?", "#7f7f7f"))
    if not view_supported():
        return None
    key = f"loaderlab-{safe_name(sweep.sweep_id)}"
    client.set_experiment_tag(sweep.experiment_id, VIEW_TAG + key, json.dumps(view_state(sweep)))
    return key


def sweep_filter(sweep: Selection) -> str:
    """The runs-page search that shows the sweep's runs, or these runs ('' for too many to name)."""
    if isinstance(sweep, Runs):
        ids = sweep.jobs["run_id"].tolist()
        return "attributes.run_id IN ({})".format(", ".join(f"'{i}'" for i in ids)) if len(ids) <= 50 else ""
    return f"tags.sweep_id = '{sweep.sweep_id}'"


def ui_url(tracking_uri: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The MLflow UI address of a saved view."""
    query = f"workflowType=machine_learning&viewStateShareKey={key}" + (
        "&compareRunsMode=CHART" if charts else ""
    )
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"


def filtered_url(tracking_uri: str, sweep: Selection) -> str:
    """The runs page filtered to the sweep or the runs: what any MLflow version understands."""
    page = f"{ui_base(tracking_uri)}/#/experiments/{sweep.experiment_id}/runs"
    if not (search := sweep_filter(sweep)):
        return page
    return f"{page}?{urllib.parse.urlencode({'searchFilter': search}, quote_via=urllib.parse.quote)}"


def safe_name(text: str) -> str:
    """A file or key name from a sweep id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "sweep"


def pd_missing(value: object) -> bool:
    """True for None or NaN, as pandas leaves an unset tag."""
    return value is None or (isinstance(value, float) and value != value)


def _chart(uuid: str, kind: str) -> dict:
    """The fields every chart card of the MLflow UI has."""
    return {
        "uuid": f"loaderlab-{uuid}",
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": SECTION,
        "deleted": False,
        "isGenerated": False,
    }
