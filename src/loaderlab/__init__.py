"""loaderlab: train image classifiers from files and measure what each loading strategy costs."""

from omegaconf import OmegaConf

from loaderlab.utils.paths import PROJECT_ROOT

__all__ = ["PROJECT_ROOT"]

# `${project_root:}` in conf/ resolves to an absolute path, so outputs/ never depends on the cwd.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
# `${pretrained_or:${model.weights},224,64}`: a backbone's native input size where it starts from
# pretrained weights, a CPU-friendly one where it trains from scratch.
OmegaConf.register_new_resolver(
    "pretrained_or", lambda weights, native, scratch: scratch if weights is None else native, replace=True
)
# `${after_freeze:${trainer.freeze_epochs}}` (debug=fast): one epoch, after phase 1's where there is one.
OmegaConf.register_new_resolver("after_freeze", lambda freeze: (freeze or 0) + 1, replace=True)
