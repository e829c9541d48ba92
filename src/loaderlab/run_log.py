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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
JOURNAL_GLOB = "mlflow-journal-*.jsonl"
_BATCH = 100  # MLflow takes at most 100 params or tags per log_batch call


def journal_path(folder: Path, run_id: str) -> Path:
    """The journal of one run in a job's folder."""
    return Path(folder) / f"mlflow-journal-{run_id}.jsonl"


def server_answers(uri: str, timeout_s: float = 5.0) -> bool:
    """Whether the tracking store can be written now: an http(s) server answers /health."""
    if not uri.startswith(("http://", "https://")):
        return True  # a local store is there whenever its disk is
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False


def deliver_record(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Send one journal record to the run."""
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
        client.set_terminated(run_id, record["status"])


def _register(client: MlflowClient, run_id: str, name: str, artifact_path: str) -> None:
    """A new version of the registered model `name` from a model the run logged as an artifact."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    client.create_model_version(name, source, run_id)


class RunLog:
    """The journal of one MLflow run and the thread that delivers it, in order, through any outage."""

    def __init__(self, uri: str, run_id: str, folder: Path, retry_s: float = 5.0):
        self.uri, self.run_id, self.retry_s = uri, run_id, retry_s
        self.path = journal_path(folder, run_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset_file = self.path.with_suffix(".delivered")
        self._records: list[dict[str, Any]] = []
        self._delivered = 0
        if self.path.exists():  # a resumed run: what an earlier job could not deliver goes first
            _, self._records, self._delivered = _read_journal(self.path)
        else:
            self.path.write_text(json.dumps({"uri": uri, "run_id": run_id}) + "\n")
        self._lowest: dict[str, float] = {}
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by close(): deliver until then, then stop
        self._outage_since: float | None = None
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
        """Log metrics at a step (none: step 0); remembers each key's lowest value."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        for key, value in numbers.items():
            if not math.isnan(value):
                self._lowest[key] = min(value, self._lowest.get(key, math.inf))
        self._append({"metrics": numbers, "step": step, "timestamp": int(time.time() * 1000)})

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
        """The lowest value of a metric logged by this job; inf if none."""
        return self._lowest.get(key, math.inf)

    @property
    def pending(self) -> int:
        """Records not delivered yet."""
        with self._cond:
            return len(self._records) - self._delivered

    def close(self, status: str, wait_s: float) -> int:
        """End the run with status: deliver for up to wait_s, then stop the thread. Returns what is
        left undelivered (kept in the journal, with a log line naming the command that sends it)."""
        self._append({"status": status})
        with self._cond:
            self._deadline = time.monotonic() + wait_s
            self._cond.notify_all()
        self._thread.join()
        left = self.pending
        if left:
            log.warning(
                "The tracking server %s did not answer: %d record(s) of run %s (metrics, tags, artifacts "
                "or its end status) are kept in %s. Deliver them once it is back: python src/deliver.py %s",
                self.uri, left, self.run_id, self.path, self.path.parent,
            )  # fmt: skip
        else:
            self.path.unlink(missing_ok=True)
            self._offset_file.unlink(missing_ok=True)
        return left

    def _append(self, record: dict[str, Any]) -> None:
        with self._cond:
            with self.path.open("a") as journal:
                journal.write(json.dumps(record) + "\n")
            self._records.append(record)
            self._cond.notify_all()

    def _done(self) -> bool:
        """Under the lock: closing and nothing left, or closing and past the deadline."""
        if self._deadline is None:
            return False
        return self._delivered == len(self._records) or time.monotonic() >= self._deadline

    def _deliver_all(self) -> None:
        client = MlflowClient(self.uri)
        failures = 0
        while True:
            with self._cond:
                while self._delivered == len(self._records) and not self._done():
                    self._cond.wait()
                if self._done():
                    return
                record = self._records[self._delivered]
            # Asked before each delivery, so the thread waits here, not inside MLflow's own retries
            # (minutes); only a call already under way when the server goes away sits in those.
            if not server_answers(self.uri):
                self._note_outage()
                with self._cond:
                    self._cond.wait_for(self._done, timeout=self.retry_s)
                continue
            try:
                deliver_record(client, self.run_id, record)
            except Exception as e:  # noqa: BLE001 - an outage is retried; anything else is reported
                if not server_answers(self.uri):
                    continue  # went away mid-call: the loop waits for it
                failures += 1
                if failures < 3:
                    time.sleep(1.0)
                    continue
                log.error("MLflow refused a record for run %s, left out: %.300s (%s)", self.run_id, record, e)
            failures = 0
            self._note_back()
            with self._cond:
                self._delivered += 1
                self._offset_file.write_text(str(self._delivered))

    def _note_outage(self) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "The tracking server %s does not answer; training goes on, and what it logs waits in %s "
                "until the server is back.", self.uri, self.path,
            )  # fmt: skip

    def _note_back(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "The tracking server %s is back after %.0f s; delivering what waited.",
                self.uri, time.monotonic() - self._outage_since,
            )  # fmt: skip
            self._outage_since = None


def _read_journal(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """A journal's header, its records and how many of them were delivered."""
    lines = path.read_text().splitlines()
    offset_file = path.with_suffix(".delivered")
    delivered = int(offset_file.read_text()) if offset_file.exists() else 0
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line], delivered


def deliver_journal(path: Path) -> int:
    """Deliver what a journal still holds, now; return how many records are left (0: all delivered)."""
    header, records, delivered = _read_journal(Path(path))
    offset_file = Path(path).with_suffix(".delivered")
    client = MlflowClient(header["uri"])
    for record in records[delivered:]:
        if not server_answers(header["uri"]):
            break
        deliver_record(client, header["run_id"], record)
        delivered += 1
        offset_file.write_text(str(delivered))
    left = len(records) - delivered
    if not left:
        Path(path).unlink()
        offset_file.unlink(missing_ok=True)
    return left
