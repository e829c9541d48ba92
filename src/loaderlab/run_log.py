"""What a job writes to its MLflow run, written to a journal in the run folder first, then delivered.

A tracking server that restarts or goes away for minutes must cost no metric. MLflow's async
logging gives up after its retries and drops the data with one console line; so every param, tag,
metric, artifact and the final status of a job goes to a journal file first, in order. One thread
delivers the journal while the job trains, and waits out an outage for as long as the job runs.
What is still undelivered when the job ends stays in the journal, and the log names the command
that delivers it later: `python src/deliver.py <run folder>`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loaderlab.journal import (
    JournalLock,
    drop_torn_tail,
    journal_path,
    keep_aside,
    read_journal,
    read_json,
    short,
    write_atomic,
)
from loaderlab.utils.errors import is_no_answer

log = logging.getLogger(__name__)
_BATCH = 100  # MLflow takes at most 100 params or tags per log_batch call
# The answers that reject a record itself (a param that conflicts, a deleted run): the record is
# kept aside and delivery goes on. Every other failure is an outage, waited out: no answer at all (a
# refused, reset or timed-out connection), or an answer that takes nothing now (401, 403, 429, 5xx,
# "database is locked").
REJECTIONS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"})
CREDENTIALS_HINT = (
    "If the server asks for a login, set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
    "(or MLFLOW_TRACKING_TOKEN) to credentials it accepts."
)


def http_status(uri: str, endpoint: str, timeout_s: float) -> int:
    """The HTTP status a tracking server answers at endpoint, asked through MLflow's own client (its
    token, TLS and client-certificate settings), with no retries; raises when it does not answer."""
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    answer = http_request(
        get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=timeout_s, raise_on_status=False
    )
    return answer.status_code


def server_answers(uri: str, timeout_s: float = 5.0) -> bool:
    """Whether an http(s) tracking server answers at all; a local store is there whenever its disk is."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        http_status(uri, "/health", timeout_s)
        return True
    except Exception:  # noqa: BLE001  no answer, whatever the transport says
        return False


def outage(uri: str, error: BaseException) -> str:
    """What an outage is, judged by its error alone: "does not answer", or "does not take records now
    (its error)" with the credentials hint (a 401 or 403 looks like any other refusal from here)."""
    if is_no_answer(error):
        return f"The tracking server {uri} does not answer."
    return f"The tracking server {uri} does not take records now ({short(error)}). {CREDENTIALS_HINT}"


def is_rejection(error: BaseException) -> bool:
    """Whether the server rejected the record itself, rather than being unable to take it now."""
    if not isinstance(error, MlflowException) or error.error_code not in REJECTIONS:
        return False
    return "database is locked" not in str(error)


def deliver_record(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Send one journal record to the run; sending one again does no harm (a retry after a lost reply)."""
    if "metrics" in record:
        step, stamp = record.get("step") or 0, record["timestamp"]
        metrics = [Metric(k, float(v), stamp, step) for k, v in record["metrics"].items()]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif "params" in record:
        items = [Param(k, str(v)) for k, v in record["params"].items()]
        for i in range(0, len(items), _BATCH):
            client.log_batch(run_id, params=items[i : i + _BATCH], synchronous=True)
    elif "tags" in record:
        items = [RunTag(k, str(v)) for k, v in record["tags"].items()]
        for i in range(0, len(items), _BATCH):
            client.log_batch(run_id, tags=items[i : i + _BATCH], synchronous=True)
    elif "text" in record:
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif "artifact" in record:
        local = Path(record["artifact"])
        if local.is_dir():
            client.log_artifacts(run_id, str(local), record.get("artifact_path"))
        elif local.exists():
            client.log_artifact(run_id, str(local), record.get("artifact_path"))
    elif "register" in record:
        _register(client, run_id, record["register"], record["artifact_path"])
    elif "status" in record:
        client.set_terminated(run_id, record["status"], end_time=record.get("end_time"))


def send(
    client: MlflowClient, uri: str, run_id: str, journal: Path, record: dict[str, Any]
) -> tuple[bool, BaseException | None]:
    """Deliver one journal record: (done with it, its error). Done and no error: on the server; done
    with an error: rejected, and kept aside; not done: an outage, the record to be sent again.

    The server is asked first, so a caller waits in its own loop, not inside MLflow's retries
    (minutes); only a call already under way when the server goes away sits in those. The probe only
    saves that wait: what a failure was is judged from its own error (see `outage`)."""
    if not server_answers(uri):
        return False, NoAnswerError(uri)
    try:
        deliver_record(client, run_id, record)
    except Exception as e:  # noqa: BLE001  judged here: a rejection, or an outage
        if not is_rejection(e):
            return False, e
        keep_aside(journal, record, e)
        return True, e
    return True, None


def _register(client: MlflowClient, run_id: str, name: str, artifact_path: str) -> None:
    """A new version of the registered model `name` from a model the run logged as an artifact."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if any(v.name == name and v.source == source for v in versions):  # registered before the reply was lost
        return
    client.create_model_version(name, source, run_id)


class RunLog:
    """The journal of one MLflow run and the thread that delivers it, in order, through any outage."""

    def __init__(
        self, uri: str, run_id: str, folder: Path, retry_s: float = 5.0, parent_run_id: str | None = None
    ):
        self.uri, self.run_id, self.retry_s = uri, run_id, retry_s
        self.path = journal_path(folder, run_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset_file = self.path.with_suffix(".delivered")
        self._lowest_file = Path(folder) / f"mlflow-lowest-{run_id}.json"  # across resumes
        self._records: list[dict[str, Any]] = []
        self._delivered = 0
        self._superseded: set[int] = set()  # an earlier job's end status: never delivered by this job
        self._lock = JournalLock(self.path)
        if not self._lock.acquire(wait=False, create=True):
            log.warning("Waiting for deliver.py, which is delivering %s, to finish.", self.path)
            self._lock.acquire(wait=True, create=True)
        if self.path.stat().st_size:  # a resumed run: what an earlier job could not deliver goes first
            drop_torn_tail(self.path)  # else this job's first record would extend a crash's cut-off line
            _, self._records, self._delivered = read_journal(self.path)
            # Delivered now, an earlier job's end status would end the run while this job trains.
            left = range(self._delivered, len(self._records))
            self._superseded = {i for i in left if "status" in self._records[i]}
        else:
            header = {"uri": uri, "run_id": run_id, "parent_run_id": parent_run_id}
            self.path.write_text(json.dumps(header) + "\n")  # the file the lock holds: same inode
        self._lowest: dict[str, float] = read_json(self._lowest_file, {})
        self._cond = threading.Condition()
        self._closing_since: float | None = None  # set by close(): deliver while the server answers
        self._wait_s = math.inf
        self._outage_since: float | None = None
        self._outage: tuple[bool, str] | None = None  # (no answer at all, `outage`'s words) while one lasts
        self._thread = threading.Thread(target=self._deliver_all, name="mlflow-delivery", daemon=True)
        self._thread.start()

    # What the job logs. Each call returns at once; the journal is on disk before it returns.
    def params(self, params: dict[str, Any]) -> None:
        """Log params (stringified, as MLflow stores them)."""
        self._append({"params": {k: str(v) for k, v in params.items()}})

    def tags(self, tags: dict[str, Any]) -> None:
        """Set tags."""
        self._append({"tags": {k: str(v) for k, v in tags.items()}})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics at a step (none: step 0); remembers each key's lowest value, across resumes."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        lower = {k: v for k, v in numbers.items() if not math.isnan(v) and v < self._lowest.get(k, math.inf)}
        self._append({"metrics": numbers, "step": step, "timestamp": int(time.time() * 1000)})
        if lower:
            self._lowest |= lower
            write_atomic(self._lowest_file, json.dumps(self._lowest))

    def text(self, text: str, artifact_file: str) -> None:
        """Log a text artifact."""
        self._append({"text": text, "artifact_file": artifact_file})

    def artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder as it is when delivered (it lives in the job's folder)."""
        self._append({"artifact": str(Path(local_path).absolute()), "artifact_path": artifact_path})

    def register_model(self, artifact_path: str, name: str) -> None:
        """Register the MLflow Model logged at artifact_path as a new version of `name`."""
        self._append({"register": name, "artifact_path": artifact_path})

    def error(self, error: BaseException) -> None:
        """Record an error: a short tag and the traceback as error.txt."""
        self.tags({"error": f"{type(error).__name__}: {error}"[:4000]})
        self.text("".join(traceback.format_exception(error)), "error.txt")

    def fail(self, message: str, wait_s: float = 30.0) -> None:
        """End the run FAILED with a message, from any thread (the stall watchdog's)."""
        self.tags({"error": message[:4000]})
        self.text(message, "error.txt")
        self.close("FAILED", wait_s)

    def lowest(self, key: str) -> float:
        """The lowest value of a metric this run logged (earlier jobs of a resumed run too); inf if none."""
        return self._lowest.get(key, math.inf)

    @property
    def pending(self) -> int:
        """Records not delivered yet."""
        with self._cond:
            return len(self._records) - self._delivered

    def close(self, status: str, wait_s: float) -> int:
        """End the run with status (and this moment as its end time). Delivery goes on while the server
        answers, however long an upload takes; a server that does not answer is waited for up to
        wait_s. Returns what is left undelivered (kept in the journal, with a log line naming the
        command that sends it)."""
        if self._closing_since is not None:  # closed already (the watchdog's fail(), then the job's end)
            return self.pending
        self._append({"status": status, "end_time": int(time.time() * 1000)})
        with self._cond:
            self._closing_since, self._wait_s = time.monotonic(), wait_s
            self._cond.notify_all()
        self._thread.join()
        left = self.pending
        if left:
            log.warning(
                "%s %d record(s) of run %s (metrics, tags, artifacts or its end status) are kept in %s. "
                "Deliver them once the server takes them: python src/deliver.py %s",
                self._outage[1] if self._outage else "Delivery stopped on an unexpected error (above).",
                left, self.run_id, self.path, self.path.parent,
            )  # fmt: skip
        else:
            self.path.unlink(missing_ok=True)
            self._offset_file.unlink(missing_ok=True)
        self._lock.release()
        return left

    def _append(self, record: dict[str, Any]) -> None:
        with self._cond:
            with self.path.open("a") as journal:
                journal.write(json.dumps(record) + "\n")
            self._records.append(record)
            self._cond.notify_all()

    def _done(self) -> bool:
        """Under the lock: closing and nothing left, or closing and the server away for wait_s."""
        if self._closing_since is None:
            return False
        if self._delivered == len(self._records):
            return True
        if self._outage_since is None:
            return False  # the server answers: an upload in progress is waited for
        return time.monotonic() - max(self._outage_since, self._closing_since) >= self._wait_s

    def _deliver_all(self) -> None:
        try:
            self._deliver_loop()
        except Exception as e:  # noqa: BLE001  a bug here must not lose records: they stay in the journal
            log.error(
                "Delivery of run %s stopped on an unexpected error (%s: %s); what is undelivered is kept "
                "in %s. Deliver it with: python src/deliver.py %s",
                self.run_id, type(e).__name__, e, self.path, self.path.parent,
            )  # fmt: skip

    def _deliver_loop(self) -> None:
        client = MlflowClient(self.uri)
        attempts = 0
        while True:
            with self._cond:
                while self._delivered == len(self._records) and not self._done():
                    self._cond.wait()
                if self._done():
                    return
                record = self._records[self._delivered]
                if self._delivered in self._superseded:
                    self._delivered += 1
                    continue
            done, error = send(client, self.uri, self.run_id, self.path, record)
            if not done:
                self._note_outage(error)
                attempts += 1
                with self._cond:  # backoff, capped at retry_s; close() wakes it to check its deadline
                    self._cond.wait_for(self._done, timeout=min(self.retry_s, 0.5 * 2**attempts))
                continue
            attempts = 0
            self._note_back()
            with self._cond:
                self._delivered += 1
                write_atomic(self._offset_file, str(self._delivered))

    def _note_outage(self, error: BaseException) -> None:
        """Log an outage when it begins, and again when it changes (gone, then refusing a login)."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        silent, what = is_no_answer(error), outage(self.uri, error)
        if self._outage is None or self._outage[0] != silent:
            log.warning(
                "%s Training goes on; what it logs waits in %s until the server takes it.", what, self.path
            )
        self._outage = silent, what

    def _note_back(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "The tracking server %s is back after %.0f s; delivering what waited.",
                self.uri, time.monotonic() - self._outage_since,
            )  # fmt: skip
            self._outage_since = self._outage = None


class NoAnswerError(ConnectionError):
    """The tracking server does not answer at all."""
