"""What a job left undelivered in its journal, delivered after the job ended (python src/deliver.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.tracking import MlflowClient

from loaderlab.journal import JournalLock, read_journal, short, write_atomic
from loaderlab.run_log import outage, send
from loaderlab.tracking import settle_parent
from loaderlab.utils.progress import Progress

log = logging.getLogger(__name__)


def deliver_journal(path: Path, progress: bool = True) -> tuple[int, int, str | None]:
    """Deliver what a journal still holds, now: (records left, records kept aside as rejected, what
    stopped delivery as `outage` words it, or None).

    `progress`: a bar over the records sent (utils/progress.py says where it shows).
    Raises BlockingIOError when a live job holds the journal."""
    lock = JournalLock(Path(path))
    if not lock.acquire(wait=False):
        if not Path(path).exists():
            return 0, 0, None
        raise BlockingIOError(f"{path} is held by a job that is still running; it delivers it itself.")
    try:
        header, records, delivered = read_journal(Path(path))
        offset_file = Path(path).with_suffix(".delivered")
        client, rejected, stopped = MlflowClient(header["uri"]), 0, None
        title = f"Delivering {len(records) - delivered} records of {path}"
        with Progress(len(records) - delivered, "record", title, progress) as bar:
            for record in records[delivered:]:
                done, error = send(client, header["uri"], header["run_id"], Path(path), record)
                if not done:
                    stopped = outage(header["uri"], error)
                    break
                rejected += error is not None
                delivered += 1
                write_atomic(offset_file, str(delivered))
                if "status" in record and header.get("parent_run_id"):
                    _settle_parent(header["uri"], header["parent_run_id"])
                bar.update(bar.done + 1)
        left = len(records) - delivered
        if not left:
            Path(path).unlink()
            offset_file.unlink(missing_ok=True)
        return left, rejected, stopped
    finally:
        lock.release()


def _settle_parent(uri: str, parent_run_id: str) -> None:
    try:
        settle_parent(uri, parent_run_id)
    except Exception as e:  # noqa: BLE001  the child's own status is delivered; the sweep's end settles it
        log.warning("Could not bring the sweep's parent run %s up to date: %s", parent_run_id, short(e))
