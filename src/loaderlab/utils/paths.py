"""Where the project and its outputs are, found once."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "LOADERLAB_ROOT"  # overrides the search below, e.g. for a non-editable install


def find_project_root() -> Path:
    """The project folder: $LOADERLAB_ROOT, else the nearest folder holding conf/config.yaml.

    The search starts at this package (an editable install lives in the project) and then at the
    working directory (a regular install runs from the project); failing both, the working directory.
    """
    if env := os.environ.get(ROOT_ENV):
        return Path(env).expanduser().resolve()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "conf" / "config.yaml").is_file() and (folder / "pyproject.toml").is_file():
                return folder
    return Path.cwd().resolve()


PROJECT_ROOT = find_project_root()
OUTPUTS = PROJECT_ROOT / "outputs"  # everything a run writes; `paths.outputs` in conf/
DATASETS = OUTPUTS / "datasets"
DEFAULT_TRACKING_URI = f"sqlite:///{OUTPUTS / 'mlflow.db'}"  # conf/tracking/default.yaml's, outside Hydra
DEFAULT_ARTIFACTS = OUTPUTS / "mlartifacts"
