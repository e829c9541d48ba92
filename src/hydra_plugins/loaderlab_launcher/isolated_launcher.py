"""A Hydra launcher that runs each sweep job in a fresh Python process, one at a time.

Hydra's basic launcher runs every job in the sweep's own process, so memory one job leaves
behind (TensorFlow's allocator, Python's heap) counts in the next job's peak. Here each job
is cloudpickled (as hydra-submitit-launcher does) and run by `python -m` this module.
It is the local twin of hydra/launcher=submitit_slurm.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from loaderlab.environment import ISOLATED_ENV

log = logging.getLogger(__name__)


class IsolatedLauncher(Launcher):
    """Sequential jobs, one fresh interpreter each."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs one after another, each in its own process."""
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs_dir = Path(str(self.config.hydra.sweep.dir)) / ".jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, each in a fresh process")
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            job_file, result_file = jobs_dir / f"{idx}.pkl", jobs_dir / f"{idx}.result.pkl"
            job_file.write_bytes(
                cloudpickle.dumps(
                    {
                        "task_function": self.task_function,
                        "config": sweep_config,
                        "hydra_context": self.hydra_context,
                        "singletons": Singleton.get_state(),
                    }
                )
            )
            env = {**os.environ, ISOLATED_ENV: "1"}
            proc = subprocess.run([self.python, "-m", __name__, str(job_file), str(result_file)], env=env)
            job_file.unlink()
            if result_file.exists():
                ret = cloudpickle.loads(result_file.read_bytes())
                result_file.unlink()
            else:
                ret = JobReturn(
                    overrides=list(overrides),
                    status=JobStatus.FAILED,
                    _return_value=RuntimeError(f"job #{idx} exited with code {proc.returncode}"),
                )
            returns.append(ret)
            if proc.returncode in (-2, 130):  # Ctrl-C: the job was killed; stop the sweep too
                raise KeyboardInterrupt
        return returns


def _picklable(ret: JobReturn) -> JobReturn:
    """The job's return, with an exception that does not pickle replaced by its text."""
    try:
        cloudpickle.dumps(ret._return_value)
    except Exception:  # noqa: BLE001
        ret._return_value = RuntimeError(repr(ret._return_value))
    return ret


def _run_job_file(job_file: str, result_file: str) -> int:
    """Child process: run one pickled job and write back its JobReturn."""
    payload = cloudpickle.loads(Path(job_file).read_bytes())
    setup_globals()
    Singleton.set_state(payload["singletons"])
    HydraConfig.instance().set_config(payload["config"])
    try:
        ret = run_job(
            hydra_context=payload["hydra_context"],
            task_function=payload["task_function"],
            config=payload["config"],
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except KeyboardInterrupt:
        return 130
    Path(result_file).write_bytes(cloudpickle.dumps(_picklable(ret)))
    return 0 if ret.status == JobStatus.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(_run_job_file(sys.argv[1], sys.argv[2]))
