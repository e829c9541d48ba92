"""A Hydra launcher that runs each sweep job in a fresh Python process of its own, one at a time.

Hydra's basic launcher runs every job in the sweep's own process, so memory one job leaves
behind (TensorFlow's allocator, Python's heap) counts in the next job's peak. Here each job is
cloudpickled, as hydra-submitit-launcher does, and run in a new interpreter, in its own session
so that nothing it starts outlives it. `submitit_local` does not fit this job:

- it starts all jobs at once, so they share the cores and each other's memory figures;
- forcing one job at a time with `max_batch_size=1` stops the sweep at the first failed job;
- a job that dies without a result (killed by the OOM killer, say) fails the whole launch.

Plugin discovery imports this module in every Hydra app of the environment, so it imports only
Hydra; the work is in `_core.py`, imported when a sweep launches. No `from __future__ import
annotations` here: discovery executes the module outside sys.modules, where dataclasses cannot
resolve string annotations.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn


@dataclass
class IsolatedLauncherConf:
    """`hydra/launcher=isolated`: the defaults, overridable as hydra.launcher.<key>=..."""

    _target_: str = "hydra_plugins.loaderlab_launcher.isolated_launcher.IsolatedLauncher"
    python: Optional[str] = None  # null: the interpreter running the sweep
    exit_grace_s: float = 60.0  # after a job wrote its result, or was interrupted, before its group is killed


ConfigStore.instance().store(
    group="hydra/launcher", name="isolated", node=IsolatedLauncherConf, provider="loaderlab"
)


class IsolatedLauncher(Launcher):
    """Sequential jobs, one fresh interpreter and process group each."""

    def __init__(self, python: Optional[str] = None, exit_grace_s: float = 60.0) -> None:
        self.python = python
        self.exit_grace_s = exit_grace_s
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep what launch needs."""
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence["JobReturn"]:
        """Run the jobs one after another, each in its own process."""
        from hydra_plugins.loaderlab_launcher import _core

        return _core.launch(self, job_overrides, initial_job_idx)
