"""A Hydra callback that groups a sweep's jobs under one MLflow parent run."""

from __future__ import annotations

import atexit
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from loaderlab.utils.environment import PARENT_RUN_ENV, SWEEP_ID_ENV, SWEPT_KEYS_ENV

log = logging.getLogger(__name__)


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


def job_run_name(base: str, overrides: str) -> str:
    """The run name: base ('tfdata-small_cnn') and the swept values ('trainer.learning_rate=0.003')."""
    swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k and k not in ("loader", "model")]
    values = parse_overrides(overrides)
    parts = [f"{key}={values[key]}" for key in swept if key in values]
    return " ".join([base, *parts])


class MlflowSweepCallback(Callback):
    """Creates the parent run once, before any job; ends it after the last one."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from loaderlab.tracking import connect, git_commit

        tracking = config.tracking
        experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_location)
        sweep_id = sweep_id_from_dir(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
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
        # Jobs read these, in this process or in the isolated launcher's child processes.
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        os.environ[SWEEP_ID_ENV] = sweep_id
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(config))
        log.info("MLflow sweep %s: parent run %s", sweep_id, self.parent_run_id)
        atexit.register(self.finish)  # a failed job makes Hydra exit before on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """End the parent run: KILLED or FAILED if any child was, else FINISHED."""
        if self.parent_run_id is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        parent = client.get_run(self.parent_run_id)
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
        )
        statuses = {c.info.status for c in children}
        status = next((s for s in ("KILLED", "FAILED", "RUNNING") if s in statuses), "FINISHED")
        client.set_terminated(self.parent_run_id, "FAILED" if status == "RUNNING" else status)
        self.parent_run_id = None
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEEP_ID_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)
