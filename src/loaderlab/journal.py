"""A run's journal on disk: where it lives, who holds it, how it is read after a crash, and where
the records the server rejected are kept. run_log.py writes and delivers it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
JOURNAL_GLOB = "mlflow-journal-*.jsonl"


def journal_path(folder: Path, run_id: str) -> Path:
    """The journal of one run in a job's folder."""
    return Path(folder) / f"mlflow-journal-{run_id}.jsonl"


def rejected_path(journal: Path) -> Path:
    """Where a journal's records that the server rejected are kept, each with its error."""
    return journal.with_name(journal.name.replace("mlflow-journal-", "mlflow-rejected-"))


class JournalLock:
    """An exclusive lock on a journal, held by whoever delivers it: the job that writes it, or
    deliver.py. Taken on the journal file itself, so it goes when the journal goes."""

    def __init__(self, path: Path):
        self.path = path
        self._file: Any = None

    def acquire(self, wait: bool, create: bool = False) -> bool:
        """Take the lock (waiting for it, or not); False if another process holds it or the journal
        is gone (delivered and removed meanwhile). `create`: make an empty journal if there is none."""
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0))
            except FileNotFoundError:
                return False
            handle = os.fdopen(descriptor, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
            try:  # the holder may have delivered and removed the journal while we waited
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._file = handle
                return True
            handle.close()
            if not wait or not self.path.exists():
                return False

    def release(self) -> None:
        """Let go of the lock."""
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None


def keep_aside(journal: Path, record: dict[str, Any], error: BaseException) -> Path:
    """Move a record the server rejected into the run folder's rejected file, with its error."""
    target = rejected_path(journal)
    with target.open("a") as out:
        out.write(json.dumps({"error": short(error), "record": record}) + "\n")
    log.error(
        "MLflow rejected a record of %s (%s); it is kept in %s: %.200s",
        journal.name, short(error), target, json.dumps(record),
    )  # fmt: skip
    return target


class JournalError(RuntimeError):
    """A journal that cannot be read at all (no header)."""


def read_journal(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """A journal's header, its records and how many of them were delivered. A torn last line (a
    crash mid-append) is dropped with a warning: it was never acknowledged to the job."""
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if any(rest for rest in lines[number:]):  # not the last line: the file is damaged
                raise JournalError(
                    f"{path}: line {number} is not a record, so the file was changed or damaged after it "
                    "was written. Delete that line (the metrics on it are lost) and deliver again. "
                    f"Received: {line[:80]!r}"
                ) from None
            log.warning("%s: its last line was cut off mid-write (a crash); dropping it: %.80s", path, line)
    try:
        header = json.loads(lines[0])
    except ValueError:
        raise JournalError(
            f"{path}: its first line is not a journal header, so this is not a run's journal (or it was "
            f"damaged): deliver the run folder that holds its own journal. Received: {lines[0][:80]!r}"
        ) from None
    offset = read_json(path.with_suffix(".delivered"), 0)
    return header, records, min(int(offset), len(records))


def drop_torn_tail(path: Path) -> None:
    """Cut a crash's half-written last line off the journal (in place: the lock is on this file)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        log.warning("%s: its last line was cut off mid-write (a crash); dropping it.", path)
        os.truncate(path, data.rfind(b"\n") + 1)


def write_atomic(path: Path, text: str) -> None:
    """Write a small file whole or not at all (a crash never leaves it empty or torn)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path, default: Any) -> Any:
    """A small JSON file's value, or default when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def short(error: BaseException) -> str:
    """An error's type and first line, for a log line."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
