"""Which worker of a tf.distribute cluster this process is (one worker without a cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Worker:
    """This process's place among the workers; worker 0 is the chief, which logs the run."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def worker_of(strategy: Any) -> Worker:
    """Read the worker index and count from a strategy's cluster resolver (TF_CONFIG)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chiefs, workers = spec.get("chief", []), spec.get("worker", [])
    if not chiefs + workers:
        return Worker()
    offset = len(chiefs) if resolver.task_type == "worker" else 0
    return Worker(index=resolver.task_id + offset, count=len(chiefs) + len(workers))
