"""Reading a sweep from the MLflow store: its parent run and its jobs, as one pandas row each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from loaderlab.utils.paths import DEFAULT_TRACKING_URI

SWEEP_HINT = "python src/train.py -m loader=inmemory,generator,sequence,tfdata"
SWEEP_FILTER = "tags.role = 'sweep'"


class ReportError(RuntimeError):
    """Something the user must fix (no store, no sweep, unknown sweep id); printed without a traceback."""


@dataclass
class Sweep:
    """A sweep's parent run and its jobs: one row per child run, oldest first, as mlflow.search_runs gives."""

    parent: Run
    jobs: pd.DataFrame
    experiment_id: str

    @property
    def sweep_id(self) -> str:
        """The sweep's id, e.g. '2026-11-25_15-12-22'."""
        return self.parent.data.tags.get("sweep_id", self.parent.info.run_id)


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
        except TrackingUnavailableError as e:
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
    newest_first = ["attributes.start_time DESC"]
    if sweep_id is None:
        parents = client.search_runs([experiment_id], SWEEP_FILTER, order_by=newest_first, max_results=1)
        if not parents:
            raise ReportError(
                f"No sweep in experiment '{experiment}' at {client.tracking_uri}. Run one first: {SWEEP_HINT}"
            )
    else:
        quoted = sweep_id.replace("'", "\\'")
        parents = client.search_runs(
            [experiment_id], f"{SWEEP_FILTER} and tags.sweep_id = '{quoted}'", order_by=newest_first
        )
        if not parents:
            recent = client.search_runs([experiment_id], SWEEP_FILTER, order_by=newest_first, max_results=5)
            known = ", ".join(r.data.tags.get("sweep_id", "?") for r in recent) or "none"
            raise ReportError(
                f"No sweep '{sweep_id}' in experiment '{experiment}' at {client.tracking_uri}. "
                f"Recent sweeps: {known}."
            )
    parent = parents[0]
    mlflow.set_tracking_uri(client.tracking_uri)  # mlflow.search_runs reads the global store
    jobs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
        output_format="pandas",
    )
    sweep = Sweep(parent, jobs.reset_index(drop=True), experiment_id)
    if jobs.empty:
        raise ReportError(f"Sweep {sweep.sweep_id} (run {parent.info.run_id}) has no jobs logged yet.")
    return sweep


def column(jobs: pd.DataFrame, name: str) -> pd.Series:
    """A column of the jobs frame, e.g. 'metrics.peak_rss_mb'; all missing where no job logged it."""
    return jobs[name] if name in jobs else pd.Series([None] * len(jobs), index=jobs.index, dtype=object)
