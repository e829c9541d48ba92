"""Reading runs from the MLflow store, one pandas row each: a sweep's jobs (with its parent run), or an
experiment's last N runs or all of them (no parent)."""

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
NOT_COMPARED = ("sweep", "evaluation")  # tags.role of runs that are no training job: parents, eval.py's
_PAGE = 1000


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

    @property
    def title(self) -> str:
        """What the chart and the report call it."""
        return f"Sweep {self.sweep_id}"

    @property
    def name(self) -> str:
        """The chart's file name, without .png."""
        return self.sweep_id


@dataclass
class Runs:
    """Training runs of one experiment that no sweep groups: its last N, or all of them; no parent run."""

    jobs: pd.DataFrame
    experiment_id: str
    experiment: str
    last: int | None = None  # None: all the experiment's runs
    parent: None = None  # nothing to log the chart on

    @property
    def title(self) -> str:
        """What the chart and the report call them."""
        which = "All" if self.last is None else "Last"
        return f"{which} {len(self.jobs)} run(s) of experiment '{self.experiment}'"

    @property
    def name(self) -> str:
        """The chart's file name, without .png."""
        return f"{self.experiment}-{'all' if self.last is None else f'last{self.last}'}"


Selection = Sweep | Runs


def open_store(uri: str) -> MlflowClient:
    """A client for an existing store; a missing SQLite file or a silent server is a ReportError."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportError(_no_store(path, uri))
    elif uri.startswith(("http://", "https://")):
        from loaderlab.data.storage import without_user_info
        from loaderlab.tracking import TrackingUnavailableError, check_reachable

        try:
            check_reachable(uri)
        except TrackingUnavailableError as e:
            raise ReportError(
                f"{e} Or pass another --tracking-uri (the default is the project's store, "
                f"{DEFAULT_TRACKING_URI}). Received: tracking_uri={without_user_info(uri)!r}"
            ) from None
    elif "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise ReportError(_no_store(path, uri))
    return MlflowClient(uri)


def experiment_id_of(client: MlflowClient, experiment: str) -> str:
    """The experiment's id; a ReportError naming the experiments there when it does not exist."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ReportError(
            f"No experiment '{experiment}' in {client.tracking_uri} (experiments there: {names}). "
            f"Pass --experiment, or run a sweep first: {SWEEP_HINT}. Received: experiment={experiment!r}"
        )
    return found.experiment_id


def _no_store(path: Path, uri: str) -> str:
    return (
        f"No MLflow store at {path}. Run a sweep first: {SWEEP_HINT}; or pass the store's --tracking-uri. "
        f"Received: tracking_uri={uri!r}"
    )


def find_sweep(client: MlflowClient, experiment: str, sweep_id: str | None = None) -> Sweep:
    """The newest sweep of the experiment, or the one named by sweep_id, with its jobs."""
    experiment_id = experiment_id_of(client, experiment)
    newest_first = ["attributes.start_time DESC"]
    if sweep_id is None:
        parents = client.search_runs([experiment_id], SWEEP_FILTER, order_by=newest_first, max_results=1)
        if not parents:
            raise ReportError(
                f"No sweep in experiment '{experiment}' at {client.tracking_uri}. Run one first: "
                f"{SWEEP_HINT}; or compare its runs: --all or --last N. Received: experiment={experiment!r}"
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
                f"Recent sweeps: {known}. Pass one of them, or --experiment where it ran. "
                f"Received: sweep_id={sweep_id!r}, experiment={experiment!r}"
            )
    parent = parents[0]
    jobs = _frame(client, experiment_id, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    sweep = Sweep(parent, jobs, experiment_id)
    if jobs.empty:
        raise ReportError(
            f"Sweep {sweep.sweep_id} (run {parent.info.run_id}) has no jobs logged yet: nothing to compare. "
            f"Wait for its first job, or pick another sweep. Received: sweep_id={sweep.sweep_id!r}"
        )
    return sweep


def find_runs(client: MlflowClient, experiment: str, last: int | None = None) -> Runs:
    """The experiment's training runs, oldest first: the newest `last` of them, or all (last=None).

    Sweep parent runs and eval.py's evaluation runs are left out: they are no training job."""
    experiment_id = experiment_id_of(client, experiment)
    ids: list[str] = []
    token = None
    while last is None or len(ids) < last:
        page = client.search_runs(
            [experiment_id], order_by=["attributes.start_time DESC"], max_results=_PAGE, page_token=token
        )
        ids += [r.info.run_id for r in page if r.data.tags.get("role") not in NOT_COMPARED]
        token = page.token
        if not token:
            break
    ids = ids if last is None else ids[:last]
    if not ids:
        raise ReportError(
            f"No training runs in experiment '{experiment}' at {client.tracking_uri}: nothing to compare. "
            f"Train one first (python src/train.py tracking.experiment={experiment}), or pass another "
            f"--experiment. Received: experiment={experiment!r}, last={last}"
        )
    jobs = pd.concat(
        [_frame(client, experiment_id, "attributes.run_id IN ({})".format(", ".join(f"'{i}'" for i in chunk)))
         for chunk in (ids[i : i + _PAGE] for i in range(0, len(ids), _PAGE))],
        ignore_index=True,
    )  # fmt: skip
    jobs = jobs.sort_values("start_time", kind="stable").reset_index(drop=True)
    return Runs(jobs, experiment_id, experiment, last)


def _frame(client: MlflowClient, experiment_id: str, filter_string: str) -> pd.DataFrame:
    """mlflow.search_runs' frame of the runs the filter selects, oldest first."""
    mlflow.set_tracking_uri(client.tracking_uri)  # mlflow.search_runs reads the global store
    jobs = mlflow.search_runs(
        [experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
        output_format="pandas",
    )
    return jobs.reset_index(drop=True)


def column(jobs: pd.DataFrame, name: str) -> pd.Series:
    """A column of the jobs frame, e.g. 'metrics.peak_rss_mb'; all missing where no job logged it."""
    return jobs[name] if name in jobs else pd.Series([None] * len(jobs), index=jobs.index, dtype=object)
