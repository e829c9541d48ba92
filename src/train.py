"""Train one model with one loading strategy; every run is logged to MLflow.

python src/train.py loader=generator model=vgg16 batch.train=32
python src/train.py -m loader=inmemory,generator,sequence,tfdata
"""

import hydra
from omegaconf import DictConfig

import loaderlab  # noqa: F401  registers the ${project_root:} resolver


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: returns the best val_loss, which sweepers minimise."""
    from loaderlab.utils.tf_startup import start_tensorflow

    start_tensorflow()  # without TensorFlow's C++ banner (LOADERLAB_TF_STARTUP_LOG=1 shows it)
    from loaderlab.training.run import train
    from loaderlab.utils.cli import exit_on_user_error

    return exit_on_user_error(lambda: train(cfg))  # a config or data error: its message, exit code 2


if __name__ == "__main__":
    from loaderlab.training.lifecycle import stop_resource_tracker

    try:
        main()
    finally:
        stop_resource_tracker()
