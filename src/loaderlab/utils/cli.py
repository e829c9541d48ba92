"""What the command-line scripts share: a config or data error ends a single run with its message."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from loaderlab.data.manifest import DatasetError
from loaderlab.loaders.decode import BadImageError
from loaderlab.utils.errors import ConfigError

T = TypeVar("T")


def exit_on_user_error(task: Callable[[], T]) -> T:
    """Run a Hydra job's task; a config or data error ends a single run with its message alone and exit
    code 2 (no traceback: the message says what to change). HYDRA_FULL_ERROR=1 shows everything, and a
    multirun's job raises as any other, for its launcher to record."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return task()
    except (ConfigError, DatasetError, BadImageError) as e:
        full = os.environ.get("HYDRA_FULL_ERROR") == "1"
        if full or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
            raise
        print(f"Error: {e}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(2)
