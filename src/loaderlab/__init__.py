"""loaderlab: train image classifiers from files and measure what each loading strategy costs."""

from pathlib import Path

from omegaconf import OmegaConf

# The repository root (editable install: src/loaderlab/__init__.py -> repo).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# `${project_root:}` in conf/ resolves to an absolute path, so outputs/ never depends on the cwd.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
