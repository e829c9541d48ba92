"""The training recipe: freeze then fine-tune, a warm start from a run, class weights, label smoothing,
the schedule, the callbacks group and the debug presets, each against real Keras and MLflow."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient
from omegaconf import open_dict

from conftest import compose_config
from loaderlab.loaders.base import Feed
from loaderlab.training import callbacks as callbacks_module
from loaderlab.training import recipe
from loaderlab.training.run import train
from test_backbones import base_of, images, save_base_weights
from test_train import latest_run


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_phase_one_trains_the_head_and_phase_two_the_base_with_its_batchnorm_statistics_frozen(
    tmp_path: Path,
) -> None:
    keras.utils.set_random_seed(0)  # the same random base every run
    path = tmp_path / "resnet.weights.h5"
    save_base_weights("resnet50", path, legacy=False)
    overrides = ["model=resnet50", f"model.weights={path}", "trainer.freeze_epochs=1", "trainer.epochs=2"]
    cfg = compose_config(overrides)
    strategy = tf.distribute.get_strategy()
    model = recipe.build_model(cfg, SimpleNamespace(shape=(32, 32, 3)), 3, strategy)
    base = base_of(model)
    phase1, phase2 = recipe.phases(cfg.trainer)
    assert (phase2.first_epoch, phase2.learning_rate) == (1, pytest.approx(cfg.trainer.learning_rate / 10))
    x, y = images(8), np.arange(8) % 3

    frozen = recipe.enter_phase(model, cfg, phase1, 2, strategy)
    before = {v.path: v.numpy() for v in base.weights}
    head = model.get_layer("predictions").kernel.numpy()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert all(np.array_equal(before[v.path], v.numpy()) for v in base.weights)  # every base weight
    assert not np.array_equal(head, model.get_layer("predictions").kernel.numpy())

    tuned = recipe.enter_phase(model, cfg, phase2, 2, strategy)
    assert tuned > frozen
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    moving = [v for v in base.non_trainable_variables if "moving" in v.path]
    assert moving and all(np.array_equal(before[v.path], v.numpy()) for v in moving)
    kernels = [v for v in base.weights if "kernel" in v.path]
    assert all(not np.array_equal(before[v.path], v.numpy()) for v in kernels)

    top_only = compose_config([*overrides, "model.fine_tune_layers=10"])
    assert frozen < recipe.enter_phase(model, top_only, phase2, 2, strategy) < tuned


@pytest.mark.slow
def test_a_fine_tune_is_one_run_with_both_phases_and_resumes_in_phase_two(
    make_cfg, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in phase 2's second epoch, the job resumes there: phase 1's fit restores its own
    finished state and runs no epoch, phase 2's restores its optimizer. The run has continuous epoch
    steps, each epoch's phase, and each phase's trainable parameter count. (A resume inside phase 1
    is the one-phase resume test_bad_input checks, from phase 1's own state folder.)"""
    freeze_epochs, interrupted_epoch = 1, 2
    weights = tmp_path / "mobilenet.weights.h5"
    save_base_weights("mobilenetv3small", weights, legacy=False)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == interrupted_epoch:
                raise KeyboardInterrupt

    original = callbacks_module.job_callbacks
    monkeypatch.setattr(callbacks_module, "job_callbacks", lambda *a: [*original(*a), Interrupt()])
    common = ["model=mobilenetv3small", f"model.weights={weights}", "model.input_size=32", "trainer.epochs=3"]
    common += [f"trainer.freeze_epochs={freeze_epochs}", "~callbacks.early_stopping"]
    experiment = "tests-finetune"
    cfg = make_cfg(*common, experiment=experiment)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    killed = latest_run(tracking_uri, experiment)
    assert killed.info.status == "KILLED"

    monkeypatch.setattr(callbacks_module, "job_callbacks", original)
    assert math.isfinite(
        train(make_cfg(*common, f"trainer.resume={cfg.paths.output_dir}", experiment=experiment))
    )
    run = latest_run(tracking_uri, experiment)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert [step for step, _ in history(tracking_uri, run.info.run_id, "val_loss")] == [0, 1, 2]
    phases = [int(value) for _, value in history(tracking_uri, run.info.run_id, "phase")]
    assert phases == [1] * freeze_epochs + [2] * (3 - freeze_epochs)
    metrics = run.data.metrics
    assert 0 < metrics["trainable_params_phase1"] < metrics["trainable_params_phase2"]


def test_a_warm_start_from_a_run_or_its_registered_model_gives_its_val_loss_before_training(
    make_cfg, tracking_uri: str, tmp_path: Path
) -> None:
    """The earlier run's best model, evaluated on the same split before any training step, gives that
    run's best_val_loss; the callbacks group's CSVLogger, added in yaml, wrote the source's epochs."""
    source_cfg = make_cfg(
        "trainer.epochs=2",
        "tracking.log_model=true",
        "tracking.register_as=warm-start-source",
        "callbacks=[default,csv_logger]",
        experiment="tests-warm",
    )
    train(source_cfg)
    source = latest_run(tracking_uri, "tests-warm")
    with open(Path(source_cfg.paths.output_dir) / "epochs.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    (version,) = [
        v.version for v in MlflowClient(tracking_uri).search_model_versions("name='warm-start-source'")
    ]
    for i, reference in enumerate([f"runs:/{source.info.run_id}", f"models:/warm-start-source/{version}"]):
        cfg = make_cfg(f"model.weights={reference}", experiment="tests-warm")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"warm{i}")
        train(cfg)
        warm = latest_run(tracking_uri, "tests-warm")
        assert warm.data.params["warm_start.layers_skipped"] == "none"
        assert warm.data.metrics["initial_val_loss"] == pytest.approx(
            source.data.metrics["best_val_loss"], abs=1e-3
        )


def test_a_warm_start_from_a_run_that_is_not_there_is_a_config_error(make_cfg) -> None:
    from loaderlab.validate import ConfigError, check_config

    with pytest.raises(ConfigError, match="model.weights=runs:/0123456789abcdef: not found"):
        check_config(make_cfg("model.weights=runs:/0123456789abcdef"))


def _batches(x: np.ndarray, y: np.ndarray):
    while True:
        yield x, y


@pytest.mark.parametrize("kind", ["arrays", "generator"])
def test_balanced_class_weights_weight_the_loss_as_computed_by_hand(kind: str) -> None:
    """Unbalanced labels [0, 0, 0, 1]: balanced weights are 4 / (2 * 3) and 4 / (2 * 1); with a learning
    rate of 0 the first step's loss is the weighted mean of the per-image cross-entropies."""
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = np.array([0, 0, 0, 1])
    weights = recipe.class_weight_for("balanced", y, 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    probabilities = model.predict(x, verbose=0)
    by_hand = np.mean([weights[label] * -np.log(probabilities[i, label]) for i, label in enumerate(y)])
    feed = Feed(x=x, y=y, batch_size=4) if kind == "arrays" else Feed(x=_batches(x, y), steps=1)
    kwargs = feed.fit_kwargs(class_weight=weights)
    if kind == "generator":  # Keras refuses class_weight there: the batches carry their weights
        assert inspect.isgenerator(kwargs["x"]) and kwargs["class_weight"] is None
    loss = model.fit(**kwargs, epochs=1, verbose=0).history["loss"][0]
    assert loss == pytest.approx(by_hand, rel=1e-5)


def test_label_smoothing_is_the_cross_entropy_of_smoothed_one_hot_targets() -> None:
    from loaderlab.models.losses import SmoothedSparseCategoricalCrossentropy

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 2])
    smoothed = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[labels]
    by_hand = np.mean(-(smoothed * np.log(probabilities)).sum(axis=1))
    loss = SmoothedSparseCategoricalCrossentropy(label_smoothing=0.1)(labels, probabilities)
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    config = keras.saving.serialize_keras_object(SmoothedSparseCategoricalCrossentropy(0.2))
    assert keras.saving.deserialize_keras_object(config).label_smoothing == 0.2  # a saved model reloads it


def test_the_cosine_schedule_warms_up_in_phase_one_and_decays_over_each_phase() -> None:
    trainer = compose_config(
        [
            "trainer.lr_schedule=cosine",
            "trainer.warmup_epochs=1",
            "trainer.freeze_epochs=2",
            "trainer.epochs=4",
        ]
    ).trainer
    first, second = recipe.phases(trainer)
    rate = recipe.learning_rate_for(trainer, first, steps_per_epoch=10)
    assert float(rate(0)) == 0.0
    assert float(rate(10)) == pytest.approx(first.learning_rate)  # the end of the warm-up
    assert float(rate(19)) < first.learning_rate / 10
    tuned = recipe.learning_rate_for(trainer, second, steps_per_epoch=10)
    assert float(tuned(0)) == pytest.approx(second.learning_rate) and float(tuned(20)) == pytest.approx(0.0)
    constant = compose_config([]).trainer
    assert recipe.learning_rate_for(constant, recipe.phases(constant)[0], 10) == constant.learning_rate


def test_debug_overfit_drives_the_loss_on_one_batch_near_zero(make_cfg, tracking_uri: str) -> None:
    cfg = make_cfg("debug=overfit", "trainer.epochs=60", experiment="tests-overfit")
    train(cfg)
    run = latest_run(tracking_uri, "tests-overfit")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["loss"] < 0.1
    assert len(history(tracking_uri, run.info.run_id, "loss")) == 60  # no early stop on its own batch
