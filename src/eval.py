"""Evaluate a finished run's best checkpoint on any dataset; the result is an MLflow run of its own.

python src/eval.py eval.run_id=<id> data=folder data.root=/data/new_photos eval.allow_other_split=true
python src/eval.py eval.run_folder=outputs/runs/2026-12-01/10-00-00 data.test_fraction=0.2 eval.split=test
"""

import hydra
from omegaconf import DictConfig

import loaderlab  # noqa: F401  registers the ${project_root:} resolver


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: returns the evaluation's accuracy."""
    from loaderlab.utils.tf_startup import start_tensorflow

    start_tensorflow()  # without TensorFlow's C++ banner (LOADERLAB_TF_STARTUP_LOG=1 shows it)
    from loaderlab.training.eval_run import evaluate_run
    from loaderlab.utils.cli import exit_on_user_error

    return exit_on_user_error(lambda: evaluate_run(cfg))  # a config or data error: its message, exit code 2


if __name__ == "__main__":
    main()
