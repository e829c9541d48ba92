"""loaderlab: train image classifiers from files and measure what each loading strategy costs."""

from omegaconf import OmegaConf

from loaderlab.utils.paths import PROJECT_ROOT

__all__ = ["PROJECT_ROOT"]

# `${project_root:}` in conf/ resolves to an absolute path, so outputs/ never depends on the cwd.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
