"""`hydra/launcher=slurm`: hydra-submitit-launcher's Slurm launcher, with what a sweep on a real
cluster needed (each measured against a one-node Slurm 22.05, tests/test_slurm.py):

- every job's outcome is collected: a failed or stopped job no longer hides the others' results,
  the sweep's parent run names it, and the sweep then fails naming it;
- job states come from `squeue` where Slurm keeps no accounting (`sacct` fails on small clusters,
  and submitit would poll a job that no longer exists for ever);
- a SQLite tracking store is refused when jobs run in parallel: the message names the server to start.

As with the isolated launcher, discovery imports only Hydra and the submitit plugin; the work is
in `_slurm.py`. No `from __future__ import annotations` (see isolated_launcher.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn


@dataclass
class LoaderlabSlurmConf(SlurmQueueConf):
    """submitit_slurm's keys (conf/hydra/launcher/slurm.yaml sets and explains them)."""

    _target_: str = "hydra_plugins.loaderlab_launcher.slurm_launcher.LoaderlabSlurmLauncher"
    setup: Optional[list] = field(default_factory=list)


ConfigStore.instance().store(
    group="hydra/launcher", name="loaderlab_slurm", node=LoaderlabSlurmConf, provider="loaderlab"
)


class LoaderlabSlurmLauncher(SlurmLauncher):
    """Submits each job with sbatch (an array), then collects every job's outcome."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence["JobReturn"]:
        """Submit, wait for every job, and return each one's JobReturn (a failed one among them)."""
        from hydra_plugins.loaderlab_launcher import _slurm

        return _slurm.launch(self, job_overrides, initial_job_idx)
