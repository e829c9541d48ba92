"""The isolated launcher's work: pickle a job, run it in a new session, collect its JobReturn.

The pickles hold no credential: `_secrets` masks them, and the job's process gets them in its
environment."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

from hydra_plugins.loaderlab_launcher._secrets import Masker, secrets_in
from loaderlab.data.storage import redact_overrides
from loaderlab.utils.environment import ISOLATED_ENV

if TYPE_CHECKING:
    from hydra_plugins.loaderlab_launcher.isolated_launcher import IsolatedLauncher

log = logging.getLogger(__name__)
INTERRUPTED_EXIT_CODE = 130


def launch(launcher: IsolatedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Run the jobs one after another, each in a fresh process; a failed job does not stop the sweep."""
    setup_globals()
    config, context = launcher.config, launcher.hydra_context
    assert config is not None and context is not None
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    jobs_dir = Path(str(config.hydra.sweep.dir)) / ".jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs, each in a fresh process")
    returns = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(redact_overrides(filter_overrides(overrides)))}")
        sweep_config = context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
        job_file, result_file = jobs_dir / f"{idx}.pkl", jobs_dir / f"{idx}.result.pkl"
        payload = {
            "task_function": launcher.task_function,
            "config": sweep_config,
            "hydra_context": context,
            "singletons": Singleton.get_state(),
        }
        masker = Masker(secrets_in([config, sweep_config]))  # the sweep's overrides name other jobs' too
        job_file.write_bytes(masker.dumps(payload))
        command = [launcher.python or sys.executable, "-m", __name__, str(job_file), str(result_file)]
        code = run_in_own_session(command, result_file, launcher.exit_grace_s, f"job #{idx}", masker.env())
        job_file.unlink(missing_ok=True)
        if result_file.exists():
            ret = masker.loads(result_file.read_bytes())
            result_file.unlink()
        else:
            ret = JobReturn(
                overrides=list(overrides),
                status=JobStatus.FAILED,
                _return_value=RuntimeError(f"job #{idx} exited with code {code} and no result"),
            )
        ret.overrides = redact_overrides(ret.overrides)  # Hydra prints them when a job failed
        returns.append(ret)
        if code in (-signal.SIGINT, INTERRUPTED_EXIT_CODE):  # the job was interrupted: stop the sweep too
            raise KeyboardInterrupt
    return returns


def run_in_own_session(
    command: list[str], result_file: Path, grace_s: float, name: str, env: dict[str, str] | None = None
) -> int:
    """Run command in a new session and return its exit code; nothing of its process group outlives it.

    The job has `grace_s` to exit once its result is written (or once it is interrupted); then
    its whole group is killed and the sweep log says so. Ctrl-C or SIGTERM to the sweep is passed
    on to the job's group, since a job in its own session no longer shares the terminal's. `env` is
    added to the job's environment (the secrets its pickle left out).
    """
    proc = subprocess.Popen(
        command, env={**os.environ, **(env or {}), ISOLATED_ENV: "1"}, start_new_session=True
    )
    deadline: float | None = None
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        _signal_group(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            if deadline is None and (received or result_file.exists()):
                deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                log.warning(f"{name} did not exit {grace_s:g} s after it ended; killing its process group")
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if _signal_group(proc.pid, signal.SIGKILL):  # e.g. worker processes the job left behind
        log.warning(f"{name} left processes in its group; they were killed")
    if received:
        return -signal.SIGINT
    return proc.returncode


def _signal_group(pgid: int, signum: int) -> bool:
    """Send a signal to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _picklable(ret: JobReturn) -> JobReturn:
    """The job's return, with an exception that does not pickle replaced by its text."""
    try:
        cloudpickle.dumps(ret._return_value)
    except Exception:  # noqa: BLE001
        ret._return_value = RuntimeError(repr(ret._return_value))
    return ret


def run_job_file(job_file: str, result_file: str) -> int:
    """In the job's process: run one pickled job and write back its JobReturn, both without secrets."""
    masker = Masker.from_env()  # out of the environment before anything else starts
    payload = masker.loads(Path(job_file).read_bytes())
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
        return INTERRUPTED_EXIT_CODE
    tmp = Path(f"{result_file}.tmp")
    tmp.write_bytes(masker.dumps(_picklable(ret)))
    os.replace(tmp, result_file)  # the launcher never reads half a result
    return 0 if ret.status == JobStatus.COMPLETED else 1


if __name__ == "__main__":
    from loaderlab.training.lifecycle import stop_resource_tracker

    try:
        sys.exit(run_job_file(sys.argv[1], sys.argv[2]))
    finally:
        stop_resource_tracker()
