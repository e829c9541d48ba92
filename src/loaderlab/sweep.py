"""A Hydra callback that groups a sweep's jobs under one MLflow parent run.

The sweep tells its jobs where they belong through a file in its own folder, not through the
environment: a job reads it only while Hydra runs it as part of that sweep, so nothing of a sweep
that failed or was interrupted reaches a later job in the same process (a notebook, pytest).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
SWEEP_FILE = "mlflow_sweep.json"  # in the sweep folder


@dataclass(frozen=True)
class Sweep:
    """What a job needs of its sweep: the parent run, the sweep's id and the keys it varies."""

    parent_run_id: str
    sweep_id: str
    swept_keys: tuple[str, ...] = ()
    folder: str = ""  # the sweep's folder


def current_sweep(output_dir: str | Path) -> Sweep | None:
    """The sweep of the job writing to output_dir: a Hydra job whose folder lies in a sweep folder
    that holds the sweep's file; else None."""
    from loaderlab.training.context import hydra_job_config

    hydra_cfg = hydra_job_config(output_dir)
    if hydra_cfg is None:
        return None
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).resolve()
    file = sweep_dir / SWEEP_FILE
    if sweep_dir not in Path(output_dir).resolve().parents or not file.exists():
        return None
    data = json.loads(file.read_text())
    return Sweep(data["parent_run_id"], data["sweep_id"], tuple(data["swept_keys"]), str(sweep_dir))


def sweep_id_from_dir(sweep_dir: str) -> str:
    """A readable sweep id from the sweep folder, e.g. '2026-11-25_15-20-00'."""
    path = Path(sweep_dir)
    return f"{path.parent.name}_{path.name}"


def parse_overrides(text: str) -> dict[str, str]:
    """'loader=tfdata data.num_images=400' -> {'loader': 'tfdata', 'data.num_images': '400'}."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    pairs = (token.split("=", 1) for token in tokens if "=" in token)
    return {key.lstrip("+~"): value for key, value in pairs}


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line sweeps (a,b or range(...)) and hydra.sweeper.params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    keys += list(config.hydra.sweeper.get("params") or {})
    return list(dict.fromkeys(keys))


def job_run_name(base: str, overrides: str, sweep: Sweep | None = None) -> str:
    """The run name: base ('tfdata-small_cnn') and the swept values ('trainer.learning_rate=0.003')."""
    swept = [k for k in (sweep.swept_keys if sweep else ()) if k not in ("loader", "model")]
    values = parse_overrides(overrides)
    parts = [f"{key}={values[key]}" for key in swept if key in values]
    return " ".join([base, *parts])


class SweepNeighbours:
    """How many jobs of one sweep run at once. Each running job holds a lock on a file of its own in
    the sweep's folder (`.running/`); counting the held locks, at the start and after each epoch,
    gives the most jobs that ran beside this one, itself included (the tag `parallel_jobs`)."""

    def __init__(self, sweep_dir: str | Path, job: str):
        self.folder = Path(sweep_dir) / ".running"
        self.file = self.folder / f"{job}.lock"
        self.most = 0
        self._fd: int | None = None

    def __enter__(self) -> SweepNeighbours:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.sample()
        return self

    def sample(self) -> int:
        """Jobs running now (this one included); the most seen so far is kept."""
        running = 0
        for path in self.folder.glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                running += 1  # a running job holds it (or this job, through its own descriptor)
            finally:
                os.close(fd)
        self.most = max(self.most, running)
        return running

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.file.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class MlflowSweepCallback(Callback):
    """Creates the parent run once, before any job, and tells the jobs of it through the sweep folder."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from loaderlab.data.storage import redact_overrides
        from loaderlab.tracking import connect, git_commit

        tracking = config.tracking
        experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_location)
        sweep_id = sweep_id_from_dir(config.hydra.sweep.dir)
        overrides = " ".join(redact_overrides(config.hydra.overrides.task))
        run = MlflowClient(tracking.uri).create_run(
            experiment_id,
            run_name=f"sweep {sweep_id}",
            tags={
                "sweep_id": sweep_id,
                "hydra_overrides": overrides,
                "git_commit": git_commit(),
                "sweep_dir": str(config.hydra.sweep.dir),
                "role": "sweep",
            },
        )
        self.parent_run_id, self.tracking_uri = run.info.run_id, tracking.uri
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        info = {"parent_run_id": self.parent_run_id, "sweep_id": sweep_id, "swept_keys": swept_keys(config)}
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))
        log.info("MLflow sweep %s: parent run %s", sweep_id, self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is not None:
            from loaderlab.tracking import settle_parent

            settle_parent(self.tracking_uri, self.parent_run_id, final=True)
