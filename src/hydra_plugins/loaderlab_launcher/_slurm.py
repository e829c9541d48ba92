"""The Slurm launcher's work: submit the sweep as a job array, collect every job's outcome, settle
the sweep's parent run. Imported when a sweep launches, not at plugin discovery."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from loaderlab.data.storage import redact_overrides
from loaderlab.sweep import SWEEP_FILE
from loaderlab.tracking import settle_parent

if TYPE_CHECKING:
    from hydra_plugins.loaderlab_launcher.slurm_launcher import LoaderlabSlurmLauncher

log = logging.getLogger(__name__)
GONE = "GONE"  # a job squeue no longer lists: ended (submitit then reads its result, or says it has none)


class SqliteInParallelError(ValueError):
    """Parallel jobs and one SQLite file: refused before anything is submitted."""


def launch(
    launcher: LoaderlabSlurmLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> list[JobReturn]:
    """Submit every job as one array and wait for each; a job that failed or was stopped gives a
    FAILED JobReturn naming it (Hydra then fails the sweep), and the parent run names it too."""
    import submitit

    config = launcher.config
    assert config is not None
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        _check_store(str(config.tracking.uri), len(job_overrides), launcher.params)
    except SqliteInParallelError as e:
        _settle(config, sweep_dir, [f"nothing submitted: {e}"])
        raise
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout", 0),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Submitting {len(job_overrides)} jobs to Slurm; sweep folder {sweep_dir}")
    numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
    for number, overrides in zip(numbers, job_overrides, strict=True):
        log.info(f"\t#{number} : {' '.join(redact_overrides(filter_overrides(overrides)))}")
    arguments = [
        (list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state())
        for n, o in zip(numbers, job_overrides, strict=True)
    ]
    with _states_without_accounting():
        submitted_at = time.time()
        jobs = executor.map_array(launcher, *zip(*arguments, strict=True))
        try:
            returns, lost = _collect(jobs, numbers, job_overrides)
        except BaseException:  # the sweep is interrupted: its jobs go with it
            for job in jobs:
                job.cancel(check=False)
            raise
    log.info(f"Slurm: {len(jobs)} jobs ended {time.time() - submitted_at:.0f} s after submission")
    _end_lost_runs(config, sweep_dir, numbers, lost)
    _settle(config, sweep_dir, [what for what in lost.values()])
    return returns


def _collect(
    jobs: list, numbers: list[int], job_overrides: Sequence[Sequence[str]]
) -> tuple[list[JobReturn], dict[int, str]]:
    """Each job's JobReturn in order; one with none (stopped, killed, out of memory) in `lost`, by number."""
    returns, lost = [], {}
    for job, number, overrides in zip(jobs, numbers, job_overrides, strict=True):
        try:
            ret = job.results()[0]
        except Exception as e:  # noqa: BLE001  submitit raises its own kinds
            reason = (str(e).strip().splitlines() or [repr(e)])[-1]
            what = f"job #{number} (Slurm job {job.job_id}) ended without a result: {reason}"
            log.error(what + f". Its log: {job.paths.stderr}")
            lost[number] = what
            ret = JobReturn(
                overrides=list(overrides), status=JobStatus.FAILED, _return_value=RuntimeError(what)
            )
        ret.overrides = redact_overrides(ret.overrides)
        returns.append(ret)
    return returns, lost


def _end_lost_runs(config: Any, sweep_dir: Path, numbers: list[int], lost: dict[int, str]) -> None:
    """A job Slurm killed (srun on `scancel --full`, a hard time limit, the OOM killer) could not end
    its run: end it KILLED here, saying why, so that no run of the sweep stays RUNNING."""
    from mlflow.tracking import MlflowClient

    from loaderlab.training.context import RUN_ID_FILE

    client = MlflowClient(str(config.tracking.uri))
    for number, what in lost.items():
        run_id_file = sweep_dir / str(number) / RUN_ID_FILE
        if not run_id_file.exists():
            continue
        run_id = run_id_file.read_text().strip()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "error", f"{what}; its run was ended by the sweep")
            client.set_terminated(run_id, "KILLED")


def _settle(config: Any, sweep_dir: Path, lost: list[str]) -> None:
    """End the sweep's parent run once every job ended (Hydra skips on_multirun_end when one failed)."""
    file = sweep_dir / SWEEP_FILE
    if file.exists():
        settle_parent(
            str(config.tracking.uri), json.loads(file.read_text())["parent_run_id"], lost, final=True
        )


def _check_store(uri: str, jobs: int, params: dict) -> None:
    """SQLite takes one writer at a time: parallel jobs would wait on its lock, their figures with them."""
    parallel = min(jobs, int(params.get("array_parallelism") or jobs))
    if uri.startswith("sqlite:") and parallel > 1:
        raise SqliteInParallelError(
            f"tracking.uri={uri} is one SQLite file, and this sweep runs {parallel} jobs at once on the "
            "cluster. Start a tracking server that every node reaches (docs/scaling-out.md, "
            "'A team MLflow server': mlflow server --backend-store-uri sqlite:///mlflow.db "
            "--host 0.0.0.0 --port 5000) and set "
            "tracking.uri=http://<host>:5000, or run one job at a time: hydra.launcher.array_parallelism=1."
        )


@contextlib.contextmanager
def _states_without_accounting() -> Iterator[None]:
    """Within: submitit reads job states from squeue where sacct fails (no accounting storage)."""
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    class Watcher(SlurmInfoWatcher):
        accounting: bool | None = None  # unknown until sacct is tried once

        def update(self) -> None:
            if self.accounting is not False:
                command = self._make_command()
                if command is None:
                    return
                try:
                    subprocess.run(command, capture_output=True, check=True, timeout=60)
                    self.accounting = True
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                    self.accounting = False
                    log.info("Slurm keeps no accounting here (sacct failed): job states come from squeue")
            if self.accounting:
                return super().update()
            self._num_calls += 1
            self._info_dict.update(_squeue_states(self._registered - self._finished))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    previous = SlurmJob.watcher
    SlurmJob.watcher = Watcher(delay_s=previous._delay_s)  # a class attribute: restored below
    try:
        yield
    finally:
        SlurmJob.watcher = previous


def _squeue_states(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """State of each job by squeue; GONE for one squeue no longer lists."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-r", "-o", "%i|%T|%N"], capture_output=True, text=True, timeout=60
        ).stdout
    except (subprocess.TimeoutExpired, OSError):
        return {}  # asked again at the next poll
    listed = {}
    for line in out.splitlines():
        job_id, state, nodes = (line.split("|") + ["", ""])[:3]
        listed[job_id.strip()] = {"JobID": job_id.strip(), "State": state.strip(), "NodeList": nodes.strip()}
    return {job_id: listed.get(job_id, {"JobID": job_id, "State": GONE}) for job_id in job_ids}
