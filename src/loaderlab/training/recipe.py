"""What a job trains and how: the model and its compile (optimizer, learning-rate schedule, loss,
metrics), class weights, and the two phases of keras.io's transfer-learning recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loaderlab.data.manifest import Manifest
from loaderlab.loaders.decode import ImageSpec

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Phase:
    """A run of fit over epochs [first_epoch, end_epoch) at one set of trainable layers."""

    number: int  # 0: the one phase of a run without trainer.freeze_epochs; 1: base frozen; 2: fine-tuning
    first_epoch: int
    end_epoch: int
    learning_rate: float

    @property
    def backup_subfolder(self) -> str:
        """Where BackupAndRestore keeps this phase's state: its optimizer differs from the other's."""
        return "" if self.number == 0 else f"phase{self.number}"


def phases(trainer: DictConfig) -> list[Phase]:
    """The run's phases: one, or with trainer.freeze_epochs the frozen base then fine-tuning."""
    freeze = trainer.get("freeze_epochs") or 0
    rate = float(trainer.learning_rate)
    if not freeze:
        return [Phase(0, 0, trainer.epochs, rate)]
    fine_tune_lr = trainer.get("fine_tune_lr")
    fine_tune_lr = rate / 10 if fine_tune_lr is None else float(fine_tune_lr)
    return [Phase(1, 0, freeze, rate), Phase(2, freeze, trainer.epochs, fine_tune_lr)]


def build_model(cfg: DictConfig, spec: ImageSpec, num_classes: int, strategy: Any) -> keras.Model:
    """The model, made in the strategy's scope under trainer.mixed_precision's dtype policy."""
    from loaderlab.training.precision import dtype_policy, dtype_policy_for, visible_gpu

    with strategy.scope(), dtype_policy(dtype_policy_for(cfg.trainer.mixed_precision, visible_gpu())):
        return instantiate(
            cfg.model.build, input_shape=spec.shape, num_classes=num_classes, augment=model_augment(cfg)
        )


def model_augment(cfg: DictConfig) -> dict | None:
    """augment=layers' knobs for the model's random layers; None where loaders or nothing augment."""
    augment = cfg.get("augment") or {}
    if augment.get("kind") != "layers":
        return None
    return {k: v for k, v in OmegaConf.to_container(augment, resolve=True).items() if k != "kind"}


def enter_phase(
    model: keras.Model, cfg: DictConfig, phase: Phase, steps_per_epoch: int, strategy: Any
) -> int:
    """Set the phase's trainable layers and compile the model for it; return its trainable parameters."""
    from loaderlab.training.precision import jit_compile_for

    if phase.number:
        _set_trainable_base(
            model, phase.number, cfg.model.get("fine_tune_layers"), bool(cfg.model.get("weights"))
        )
    with strategy.scope():
        model.compile(
            optimizer=instantiate(
                cfg.trainer.optimizer, learning_rate=learning_rate_for(cfg.trainer, phase, steps_per_epoch)
            ),
            loss=loss_for(cfg.trainer),
            metrics=list(cfg.trainer.metrics),
            jit_compile=jit_compile_for(cfg.trainer.jit_compile),
        )
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def base_of(model: keras.Model) -> keras.Model | None:
    """The pretrained base inside a backbone model: its one nested keras.Model; None for small_cnn."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if len(nested) == 1 else None


def _set_trainable_base(
    model: keras.Model, number: int, fine_tune_layers: int | None, pretrained: bool
) -> None:
    """Phase 1: the base frozen. Phase 2: its top `fine_tune_layers` layers (all when None) trainable;
    a pretrained base's BatchNorm layers stay in inference mode in both (keras.io's guide)."""
    from loaderlab.models.backbone import freeze_batchnorm

    base = base_of(model)
    base.trainable = number == 2
    if number == 2 and fine_tune_layers:
        for layer in base.layers[: -int(fine_tune_layers)]:
            layer.trainable = False
    if pretrained:
        freeze_batchnorm(base)


def learning_rate_for(trainer: DictConfig, phase: Phase, steps_per_epoch: int) -> Any:
    """The phase's rate: constant, or cosine decay over the phase (after trainer.warmup_epochs of linear
    warm-up in the first phase)."""
    if trainer.get("lr_schedule", "constant") == "constant":
        return phase.learning_rate
    steps = max(1, (phase.end_epoch - phase.first_epoch) * steps_per_epoch)
    warmup = min(steps - 1, (trainer.get("warmup_epochs") or 0) * steps_per_epoch) if phase.number < 2 else 0
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else phase.learning_rate,
        decay_steps=steps - warmup,
        warmup_target=phase.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def loss_for(trainer: DictConfig) -> Any:
    """trainer.loss by name, or with trainer.label_smoothing the sparse cross-entropy that smooths."""
    smoothing = trainer.get("label_smoothing") or 0.0
    if not smoothing:
        return trainer.loss
    from loaderlab.models.losses import SmoothedSparseCategoricalCrossentropy

    return SmoothedSparseCategoricalCrossentropy(label_smoothing=float(smoothing))


def class_weight_for(setting: Any, labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """trainer.class_weight: null, `balanced` (n / (classes * n_c), as scikit-learn), or {class: weight}."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(labels, minlength=num_classes)
        return {c: len(labels) / (num_classes * n) if n else 0.0 for c, n in enumerate(counts.tolist())}
    return {int(c): float(w) for c, w in dict(setting).items()}


def debug_subset(trainer: DictConfig, train_batch: int, manifest: Manifest) -> Manifest:
    """trainer.limit_images: that many images of each split; trainer.overfit_batches: that many training
    batches, validated on the same images. Both drawn with trainer.seed; the manifest as it is otherwise."""
    if trainer.get("overfit_batches"):
        train = manifest.train.sample(trainer.overfit_batches * train_batch, trainer.seed)
        return dataclasses.replace(manifest, train=train, val=train, test=None)
    if trainer.get("limit_images"):
        n, seed = trainer.limit_images, trainer.seed
        test = manifest.test.sample(n, seed) if manifest.test is not None else None
        return dataclasses.replace(
            manifest, train=manifest.train.sample(n, seed), val=manifest.val.sample(n, seed), test=test
        )
    return manifest


class PhaseLog(keras.callbacks.Callback):
    """Adds each epoch's phase and learning rate to its logs, so both are metrics with step = epoch."""

    def __init__(self, phase: Phase):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.phase.number:
            logs["phase"] = self.phase.number
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
