"""MLflow: the store, the experiment, one run per job, and how runs end."""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig, OmegaConf

from loaderlab import PROJECT_ROOT
from loaderlab.data.storage import redact, without_user_info
from loaderlab.journal import short
from loaderlab.run_log import RunLog, http_status
from loaderlab.utils.errors import is_no_answer

log = logging.getLogger(__name__)


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached, or refuses us; raised before any training."""


class TrackingAuthError(TrackingUnavailableError):
    """The tracking server refuses the credentials (or their absence)."""


# MLflow's own client reads these; they stay in the environment, never in the config.
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def check_reachable(uri: str, timeout_s: float = 30.0) -> None:
    """Fail fast when an http(s) tracking server does not answer, or does not let these credentials in.

    Asked through MLflow's own client, so its token, TLS and client-certificate settings apply."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        http_status(uri, "/health", timeout_s)
    except Exception as e:  # noqa: BLE001  no answer, whatever the transport says
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} cannot be reached ({type(e).__name__}). Start it (e.g. "
            f"`mlflow server --host 127.0.0.1 --port 5000`) or set tracking.uri to another store, "
            "e.g. the default sqlite:///<repo>/outputs/mlflow.db."
        ) from None
    # /health answers everyone; an API call shows whether a server with authentication lets us in.
    try:
        status = http_status(uri, "/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
    except Exception as e:  # noqa: BLE001
        raise TrackingUnavailableError(f"MLflow tracking server {uri} stopped answering ({e}).") from None
    if status in (401, 403):
        given = "were refused" if os.environ.get(USERNAME_ENV) else "are not set"
        raise TrackingAuthError(
            f"MLflow tracking server {uri} requires a login and the credentials {given} (HTTP {status}). "
            f"Set {USERNAME_ENV} and {PASSWORD_ENV} in the environment to your user on that server "
            "(never in the config: it is logged)."
        )


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store across processes: MLflow's schema migration races."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def release_artifact_threads() -> None:
    """Stop the download threads that MLflow's artifact repositories leave after a copy."""
    # Each repository holds itself in a reference cycle (its async-logging handler), so its
    # download pool's worker threads live on until the cycle collector frees it.
    gc.collect()


def connect(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at the store and return the experiment id, creating it if needed."""
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        return _experiment_id(uri, experiment, artifact_location)
    except MlflowException as e:  # the server went away after check_reachable's answer
        if not is_no_answer(e):
            raise
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} stopped answering ({short(e)}). Start it again, or set "
            "tracking.uri to another store."
        ) from e


def _experiment_id(uri: str, experiment: str, artifact_location: str | None) -> str:
    with store_lock(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = Path(artifact_location).absolute().as_uri() if artifact_location else None
        try:
            return client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # a job on another machine created it first
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id


def flatten(cfg: DictConfig, prefix: str = "") -> dict[str, str]:
    """The resolved config as dotted keys, e.g. {'loader.workers': '2'}; storage secrets redacted.

    `prefix` names where cfg sits in the whole config ('data' for cfg.data)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "storage_options":
                    value = redact(value)
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), prefix)
    return out


def git_commit() -> str:
    """The repository's HEAD commit, with '-dirty' when there are uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settle_parent(uri: str, parent_run_id: str, lost: Sequence[str] = (), final: bool = False) -> None:
    """End the parent run with its jobs' status so far: KILLED or FAILED if any job was, else FINISHED;
    the tag `failed_jobs` names each job that did not finish, and `lost` ones that ended with no run.

    Every job calls it as it ends, however it ends, and so does the end of the sweep (`final`): a
    sweep that stops early (a failed or interrupted job, which makes Hydra skip on_multirun_end)
    still leaves its parent ended with the status of the jobs that ran. While a job still runs (a
    parallel sweep), only the end of the sweep settles the parent; a run left RUNNING then failed.
    """
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    statuses = {c.info.status for c in children}
    if "RUNNING" in statuses and not final:
        return
    failed = [
        f"{c.data.tags.get('mlflow.runName', c.info.run_id)} ({c.info.status})"
        for c in children
        if c.info.status != "FINISHED"
    ] + list(lost)
    status = next((s for s in ("KILLED", "FAILED") if s in statuses), "FAILED" if failed else "FINISHED")
    if failed:
        client.set_tag(parent_run_id, "failed_jobs", "; ".join(sorted(failed))[:5000])
    elif "failed_jobs" in parent.data.tags:  # a resumed job finished since
        client.delete_tag(parent_run_id, "failed_jobs")
    client.set_terminated(parent_run_id, status)


DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself, or where `mlflow ui` listens by default."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI


def run_links(tracking_uri: str, experiment_id: str, run_id: str, folder: str) -> str:
    """Where a finished job is: its run id and folder, the run's page in the MLflow UI, and the command
    that serves that UI where the store is not a server."""
    lines = [
        f"MLflow run {run_id}, run folder {folder}",
        f"  {without_user_info(ui_base(tracking_uri))}/#/experiments/{experiment_id}/runs/{run_id}",
    ]
    if not tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  (first start the UI: mlflow ui --backend-store-uri {tracking_uri})")
    return "\n".join(lines)


@contextmanager
def tracked_run(
    uri: str,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    folder: Path,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    wait_s: float = 300.0,
) -> Iterator[RunLog]:
    """An MLflow run that always ends: FINISHED, FAILED with the error, or KILLED on Ctrl-C/SIGTERM.

    Everything the job logs goes through the RunLog, so a server outage mid-run costs nothing; at the
    end the job waits up to wait_s for the server (an interrupted job a tenth of that), then keeps
    what is left in its folder. The parent run of a sweep is brought up to date as each job ends.
    """
    client = MlflowClient(uri)
    if run_id is None:
        lineage = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(tags | lineage))
        run_id = run.info.run_id
    else:  # resumed: the same run, running again
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if parent_run_id:
        client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    run_log = RunLog(uri, run_id, folder, parent_run_id=parent_run_id)
    status, wait = RunStatus.FINISHED, wait_s
    try:
        yield run_log
    except KeyboardInterrupt as e:
        run_log.error(e)
        status, wait = RunStatus.KILLED, wait_s / 10
        raise
    except BaseException as e:
        run_log.error(e)
        status = RunStatus.FAILED
        raise
    finally:
        left = run_log.close(RunStatus.to_string(status), wait)
        if parent_run_id and not left:
            try:
                settle_parent(uri, parent_run_id)
            except Exception as e:  # noqa: BLE001 - the job's own outcome stands; the sweep's end settles it
                log.warning("Could not bring the sweep's parent run %s up to date: %s", parent_run_id, e)
