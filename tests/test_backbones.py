"""Any keras.applications backbone by name: its family's preprocessing inside the model, a pretrained
base in inference mode, weights from Keras' cache or a file (never downloaded here), mixed precision."""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import compose_config, train_command
from loaderlab.models.backbone import keras_models_folder

FAMILIES = ["resnet50", "efficientnetv2b0", "mobilenetv3small", "convnext_tiny", "vgg16", "densenet121"]
SHAPE = (32, 32, 3)


def build(family: str, *overrides: str, shape: tuple = SHAPE, classes: int = 3) -> keras.Model:
    cfg = compose_config([f"model={family}", *overrides])
    return instantiate(cfg.model.build, input_shape=shape, num_classes=classes)


def images(n: int = 4, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, channels), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_in_model_preprocessing_matches_its_preprocess_input(family: str) -> None:
    cfg = compose_config([f"model={family}"])
    module = getattr(keras.applications, cfg.model.build.preprocessing)
    model = build(family)
    preprocess = keras.Model(model.input, model.get_layer("preprocess").output)
    rgb = images()
    expected = module.preprocess_input(rgb.astype("float32"))
    np.testing.assert_allclose(preprocess.predict(rgb, verbose=0), expected, atol=1e-4)
    grey_model = build(family, shape=(32, 32, 1))
    grey = images(channels=1)
    grey_preprocess = keras.Model(grey_model.input, grey_model.get_layer("preprocess").output)
    np.testing.assert_allclose(
        grey_preprocess.predict(grey, verbose=0),
        module.preprocess_input(np.repeat(grey, 3, axis=-1).astype("float32")),
        atol=1e-4,
    )  # one channel repeated to three
    assert model.output.dtype == "float32"


def test_the_native_size_is_the_default_with_pretrained_weights_and_64_from_scratch() -> None:
    assert compose_config(["model=resnet50"]).model.input_size == 64
    assert compose_config(["model=resnet50", "model.weights=imagenet"]).model.input_size == 224
    assert (
        compose_config(["model=resnet50", "model.weights=imagenet", "model.input_size=96"]).model.input_size
        == 96
    )


def save_base_weights(family: str, path: Path, legacy: bool) -> keras.Model:
    """A random-init base of the family saved to path: in Keras' own legacy .h5 layout (as the files
    Keras downloads), or with save_weights; returns that base."""
    cfg = compose_config([f"model={family}"])
    make = getattr(keras.applications, cfg.model.build.application)
    base = make(include_top=False, weights=None, input_shape=SHAPE, **cfg.model.build.options)
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, base)
    else:
        base.save_weights(path)
    return base


def base_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


@pytest.fixture
def keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keras' cache folder pointed at an empty folder of this test's (as KERAS_HOME does at start-up)."""
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    return keras_models_folder()


def test_imagenet_weights_already_in_keras_cache_are_used_without_a_download(keras_cache: Path) -> None:
    file = compose_config(["model=resnet50"]).model.build.imagenet_file
    saved = save_base_weights("resnet50", keras_cache / file, legacy=True)
    model = build("resnet50", "model.weights=imagenet")
    for ours, theirs in zip(base_of(model).weights, saved.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_weights_file_of_ones_own_loads_into_the_base(tmp_path: Path) -> None:
    path = tmp_path / "mine" / "efficientnet.weights.h5"
    saved = save_base_weights("efficientnetv2b0", path, legacy=False)
    model = build("efficientnetv2b0", f"model.weights={path}")
    for ours, theirs in zip(base_of(model).weights, saved.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_missing_weights_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from loaderlab.validate import ConfigError, check_config

    with pytest.raises(ConfigError, match="model.weights is not a file.*Received: weights=.*nope.h5"):
        check_config(compose_config(["model=resnet50", f"model.weights={tmp_path / 'nope.h5'}"]))


def fit_once(model: keras.Model) -> None:
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(images(8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize("trainable_base", [False, True])
def test_a_pretrained_base_keeps_its_batchnorm_statistics_frozen_or_fine_tuned(
    tmp_path: Path, trainable_base: bool
) -> None:
    """Frozen: every base weight unchanged, the head trained. Fine-tuned: the base's kernels change,
    and its BatchNorm moving statistics do not (the base runs with training=False)."""
    path = tmp_path / "resnet.weights.h5"
    save_base_weights("resnet50", path, legacy=False)
    model = build("resnet50", f"model.weights={path}", f"model.build.trainable_base={trainable_base}")
    base = base_of(model)
    moving = {v.path: v.numpy() for v in base.non_trainable_variables if "moving" in v.path}
    kernels = {v.path: v.numpy() for v in base.weights if "kernel" in v.path}
    head = model.get_layer("predictions").kernel.numpy()
    fit_once(model)
    assert moving and all(np.array_equal(moving[v.path], v.numpy()) for v in base.weights if v.path in moving)
    changed = [not np.array_equal(kernels[v.path], v.numpy()) for v in base.weights if v.path in kernels]
    assert any(changed) == trainable_base
    assert not np.array_equal(head, model.get_layer("predictions").kernel.numpy())


@pytest.mark.slow
def test_imagenet_weights_offline_stop_the_run_before_any_data_naming_the_file(tmp_path: Path) -> None:
    """No cached file and no network: train.py stops at its checks, before its dataset is made or read,
    naming the file Keras wants and the folder to put it in."""
    import os

    data_root = tmp_path / "not-yet-generated"
    command = train_command(tmp_path, data_root, "model=mobilenetv3small", "model.weights=imagenet")
    # A proxy on a closed port: offline for urllib (Keras' download) wherever the suite runs.
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env = {**os.environ, **offline, "KERAS_HOME": str(tmp_path / "keras-home")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]  # a config error: its message, exit code 2
    file = compose_config(["model=mobilenetv3small"]).model.build.imagenet_file
    assert f"Put the file {file} in {tmp_path / 'keras-home' / 'models'}/" in output, output[-3000:]
    assert "Data:" not in output and not data_root.exists()  # stopped before the dataset was made


def test_mixed_precision_runs_where_the_device_can_and_is_refused_where_it_cannot(make_cfg) -> None:
    from loaderlab.training.precision import cpu_has_bfloat16, visible_gpu
    from loaderlab.training.run import train
    from loaderlab.validate import ConfigError

    before = keras.config.dtype_policy().name
    cfg = make_cfg("trainer.mixed_precision=true", experiment="mixed-precision")
    if not (visible_gpu() or cpu_has_bfloat16()):
        with pytest.raises(ConfigError, match="bfloat16 instructions"):
            train(cfg)
        return
    assert np.isfinite(train(cfg))
    assert keras.config.dtype_policy().name == before  # the job restored the global policy
    model = keras.models.load_model(Path(cfg.paths.output_dir) / "checkpoints" / "best.keras")
    policies = {layer.dtype_policy.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert policies == {"mixed_float16" if visible_gpu() else "mixed_bfloat16"}
    assert model.predict(images(2), verbose=0).dtype == np.float32


def test_mixed_precision_values_are_checked_against_the_device() -> None:
    from loaderlab.training.precision import dtype_policy_for
    from loaderlab.validate import ConfigError

    assert dtype_policy_for(True, gpu=True) == "mixed_float16"
    assert dtype_policy_for(False, gpu=False) == "float32"
    with pytest.raises(ConfigError, match="needs a GPU"):
        dtype_policy_for("mixed_float16", gpu=False)
    with pytest.raises(ConfigError, match="Received: mixed_precision='half'"):
        dtype_policy_for("half", gpu=True)
