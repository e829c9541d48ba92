"""Every group option and preset composes; bad values stop with a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR, compose_config
from loaderlab.validate import ConfigError, check_config

GROUPS = ["data", "loader", "model", "augment", "batch", "trainer", "callbacks", "tracking", "strategy"]
PRESETS = ["debug", "experiment"]  # off (null) by default
REQUIRED = {
    "data=folder": ["data.root=/x"],
    "data=csv": ["data.csv=/x.csv"],
    "experiment=finetune": ["data.root=/x", "model.weights=null"],  # imagenet would be fetched here
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in GROUPS + PRESETS for o in options(g)],
)
def test_every_option_composes_and_resolves(override: str) -> None:
    cfg = compose_config([override, *REQUIRED.get(override, [])])
    container = OmegaConf.to_container(cfg, resolve=False)
    assert set(GROUPS) <= set(container)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/job"  # ${hydra:runtime.output_dir} needs a running job
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    check_config(cfg)


def test_defaults_are_the_documented_ones() -> None:
    cfg = compose_config()
    assert (cfg.data.name, cfg.model.name) == ("synthetic", "small_cnn")
    assert cfg.loader._target_.endswith("TFDataLoader")
    assert cfg.tracking.uri.startswith("sqlite:////") and cfg.tracking.uri.endswith("/outputs/mlflow.db")
    assert cfg.tracking.experiment == "loaderlab"


@pytest.mark.parametrize(("group", "option"), [("loader", "tfdata"), ("augment", "rrc")])
def test_an_unknown_option_is_refused_with_the_options(group: str, option: str) -> None:
    with pytest.raises(ConfigCompositionException, match="Available options") as e:
        compose_config([f"{group}=magic"])
    assert option in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["batch.train=0"], "batch.train must be a positive integer"),
        (["batch.val=-4"], "batch.val must be a positive integer"),
        (["trainer.epochs=0"], "trainer.epochs must be a positive integer"),
        (["model=vgg16", "model.input_size=16"], "at least 32 px"),
        (["data.channels=2"], "data.channels must be 1 or 3"),
        (["data.on_bad_image=ignore"], "data.on_bad_image must be one of"),
        (["data.scaled_decode=sometimes"], "data.scaled_decode must be true or false"),
        (["trainer.freeze_epochs=1"], "model=small_cnn has none.*Received: freeze_epochs=1"),
        (["model=resnet50", "trainer.freeze_epochs=8"], "between 1 and trainer.epochs - 1"),
        (["trainer.lr_schedule=linear"], "trainer.lr_schedule must be one of"),
        (["trainer.label_smoothing=0.1", "trainer.loss=mse"], "smooths the sparse cross-entropy only"),
        (["trainer.class_weight=even"], "trainer.class_weight must be null, balanced"),
        (["+callbacks.mine={patience: 2}"], "callbacks.mine needs a _target_"),
        (["model.weights=/x.h5"], "model=small_cnn has no pretrained base"),
        (["strategy=multiworker", "trainer.class_weight=balanced"], "not run by strategy=multiworker"),
        (["data.resize=stretch"], r"data.resize must be one of \['squash', 'crop', 'pad'\]. Received"),
        (["data.eval_crop=1.5"], "data.eval_crop must be null or in"),
        (["augment.kind=mixup"], r"augment must be one of \['none', 'flip', 'rrc', 'layers'\]"),
        (["augment=rrc", "augment.scale=[0.5,0.2]"], "augment.scale must be"),
        (["augment=rrc", "loader=inmemory"], "loader=inmemory decodes every image once.*augment=layers"),
        (["augment=flip", "loader=tfdata_service"], "tfdata_service.*loader=tfdata or loader=packed"),
        (["augment=rrc", "loader.cache=memory"], "loader.cache keeps decoded images"),
        (["augment=rrc", "strategy=multiworker"], "does not number epochs"),
    ],
)
def test_bad_values_say_what_to_change(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))


def test_rectangular_input_size() -> None:
    spec = check_config(compose_config(["model.input_size=[48,64]", "data.channels=1"]))
    assert spec.shape == (48, 64, 1)


@pytest.mark.parametrize("data", ["synthetic", "folder", "csv"])
def test_scaled_decode_is_on_by_default_and_can_be_turned_off(data: str) -> None:
    required = {"folder": ["data.root=/x"], "csv": ["data.csv=/x.csv"]}.get(data, [])
    assert check_config(compose_config([f"data={data}", *required])).scaled_decode is True
    off = check_config(compose_config([f"data={data}", *required, "data.scaled_decode=false"]))
    assert off.scaled_decode is False


@pytest.mark.parametrize("launcher", ["isolated", "slurm"])
def test_launcher_presets_compose(launcher: str) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    if launcher == "slurm":
        assert target.endswith("SlurmLauncher") and "partition" in cfg.hydra.launcher
        assert "export LOADERLAB_PROCESS_ISOLATED=1" in cfg.hydra.launcher.setup
    else:
        assert target.endswith("IsolatedLauncher")
