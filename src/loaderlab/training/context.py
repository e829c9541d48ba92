"""Where a job stands: what Hydra says of it, and the folder its state (checkpoints, run id) lives in."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from loaderlab.data.storage import redact_overrides
from loaderlab.utils import environment

RUN_ID_FILE = "mlflow_run_id"
BACKUP_DIR = "backup"  # the epoch state trainer.resume continues from


def hydra_job_config(output_dir: str | Path) -> DictConfig | None:
    """Hydra's config of the job writing to output_dir, or None: no Hydra job, or another one's config
    left in this process (an earlier sweep in a notebook or a test session)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    ran_in = hydra_cfg.runtime.get("output_dir")
    return hydra_cfg if ran_in and Path(ran_in).resolve() == Path(output_dir).resolve() else None


def hydra_facts(output_dir: str | Path) -> tuple[str, bool, str]:
    """(the job's command-line overrides, whether it runs in a process of its own, the loader option)."""
    hydra_cfg = hydra_job_config(output_dir)
    if hydra_cfg is None:
        return "", True, "job"
    overrides = " ".join(redact_overrides(hydra_cfg.overrides.task))
    loader = hydra_cfg.runtime.choices.get("loader") or "job"
    if hydra_cfg.mode == RunMode.RUN:
        return overrides, True, loader
    return overrides, os.environ.get(environment.ISOLATED_ENV) == "1", loader


def state_folder(cfg: DictConfig) -> Path:
    """Where checkpoints and the MLflow run id live: this job's folder, or the one resumed."""
    resume = cfg.trainer.resume
    if resume in (False, None):
        return Path(cfg.paths.output_dir)
    if resume is True:
        runs = sorted(
            Path(cfg.paths.outputs).glob(f"*runs/**/{RUN_ID_FILE}"), key=lambda p: p.stat().st_mtime
        )
        if not runs:
            raise FileNotFoundError(
                "trainer.resume=true but no earlier run was found under "
                f"{cfg.paths.outputs}. Pass the run folder: trainer.resume=<path>."
            )
        return runs[-1].parent
    folder = Path(str(resume))
    if not (folder / RUN_ID_FILE).exists():
        raise FileNotFoundError(
            f"trainer.resume={resume}: no {RUN_ID_FILE} in that folder; "
            "pass the output folder of an earlier run."
        )
    return folder


def check_fresh_folder(folder: Path) -> None:
    """Refuse a folder that holds an earlier job's training state: Keras would silently continue it."""
    if (folder / BACKUP_DIR).exists():
        from loaderlab.utils.errors import ConfigError

        raise ConfigError(
            f"{folder} already holds an earlier job's training state ({BACKUP_DIR}/), which this job "
            f"would silently continue. Set trainer.resume={folder} to continue it, or give this job a "
            "folder of its own (hydra.run.dir=..., or paths.output_dir in a composed config)."
        )
