"""One training job: data, loader, model and fit, measured and logged to MLflow, read top to bottom."""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from hydra.utils import instantiate
from omegaconf import DictConfig

from loaderlab import tracking
from loaderlab.data.manifest import Manifest
from loaderlab.loaders.base import Loader
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.monitor import GpuMemory, MemorySampler, NvmlMemory, TensorFlowMemory, ThroughputTracker
from loaderlab.sweep import job_run_name
from loaderlab.training.context import RUN_ID_FILE, hydra_facts, state_folder
from loaderlab.training.distribute import Worker, worker_of
from loaderlab.training.lifecycle import no_child_left, stop_signals_as_interrupt
from loaderlab.utils import environment
from loaderlab.utils.system import MB
from loaderlab.validate import check_config, drop_bad_images

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Train one job and return its best val_loss; the MLflow run always ends with a status."""
    state_dir = state_folder(cfg)
    state_dir.mkdir(parents=True, exist_ok=True)
    run_id_file = state_dir / RUN_ID_FILE
    resumed_run_id = run_id_file.read_text().strip() if cfg.trainer.resume else None
    # First: MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    strategy = instantiate(cfg.strategy)
    worker = worker_of(strategy)
    # The chief logs the run; other workers keep a store of their own in their folder.
    uri = cfg.tracking.uri if worker.is_chief else f"sqlite:///{state_dir}/worker{worker.index}-mlflow.db"
    experiment_id = tracking.connect(uri, cfg.tracking.experiment, cfg.tracking.artifact_location)
    overrides, isolated, loader_choice = hydra_facts()
    tags = {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "git_commit": tracking.git_commit(),
        "hydra_overrides": overrides,
        "sweep_id": os.environ.get(environment.SWEEP_ID_ENV, "none"),
        "process_isolated": str(isolated).lower(),
    }
    with (
        no_child_left(),
        stop_signals_as_interrupt(),
        tracking.tracked_run(
            experiment_id, job_run_name(f"{loader_choice}-{cfg.model.name}", overrides), tags, resumed_run_id
        ) as run,
    ):
        run_id_file.write_text(run.info.run_id)
        if resumed_run_id is None:
            mlflow.log_params(tracking.flatten(cfg))
        try:
            # Inside the run, so that a bad value in a sweep shows as a FAILED job with its message.
            spec = check_config(cfg)
            loader = instantiate(cfg.loader)
            name = job_run_name(f"{loader.name}-{cfg.model.name}", overrides)
            mlflow.set_tags({"loader": loader.name, "mlflow.runName": name})
            return _train_logged(cfg, spec, loader, strategy, worker, state_dir, run.info.run_id)
        finally:
            _log_folder_artifacts(Path(cfg.paths.output_dir))


def _train_logged(
    cfg: DictConfig,
    spec: ImageSpec,
    loader: Loader,
    strategy: Any,
    worker: Worker,
    state_dir: Path,
    run_id: str,
) -> float:
    """The job's steps, in order, inside its MLflow run."""
    if worker.count > 1:
        from loaderlab.training import distributed

        distributed.check_loader(loader, worker)  # before any data work
    manifest, bad = _read_manifest(cfg)
    train_batch, val_batch = _global_batches(cfg, strategy, worker)
    decoder = ImageDecoder(spec, cfg.data.on_bad_image)
    monitors = Monitors.start(cfg, images_per_epoch=len(manifest.train))  # the baseline: before the pipeline
    cluster: dict[str, float] = {}  # multiworker: every worker's peak memory
    try:
        if worker.count > 1:
            cluster = _fit_multiworker(
                cfg, loader, manifest, decoder, strategy, worker, state_dir, run_id, monitors
            )
        else:
            train_feed = loader.feed(manifest.train, decoder, train_batch, True, cfg.trainer.seed)
            val_feed = loader.feed(manifest.val, decoder, val_batch, False, cfg.trainer.seed)
            model = _build_model(cfg, spec, manifest, strategy)
            best = _best_val_loss(run_id)
            callbacks = _callbacks(cfg, state_dir, monitors.throughput, best, train_batch, strategy, worker)
            monitors.throughput.fit_start()
            model.fit(
                **train_feed.fit_kwargs(),
                **val_feed.validation_kwargs(),
                epochs=cfg.trainer.epochs,
                callbacks=callbacks,
                verbose=cfg.trainer.verbose,
            )
    finally:
        summary = monitors.stop() | cluster
        _log_skipped(cfg, bad, decoder.skipped, summary)
        mlflow.log_metrics(summary)
    return _log_outcome(cfg, state_dir, run_id, summary)


def _fit_multiworker(
    cfg: DictConfig,
    loader: Loader,
    manifest: Manifest,
    decoder: ImageDecoder,
    strategy: Any,
    worker: Worker,
    state_dir: Path,
    run_id: str,
    monitors: Monitors,
) -> dict[str, float]:
    """The distributed loop in fit's place; returns every worker's peak memory, gathered on each."""
    from loaderlab.training import cluster, distributed

    replicas = strategy.num_replicas_in_sync
    plan = distributed.Plan.of(len(manifest.train), worker.count, cfg.batch.train * replicas)
    mlflow.log_params(plan.params())
    monitors.throughput.images_per_epoch = plan.train_images  # all workers' images per epoch
    model = _build_model(cfg, decoder.spec, manifest, strategy)
    best = _best_val_loss(run_id)
    callbacks = _callbacks(cfg, state_dir, monitors.throughput, best, plan.global_batch, strategy, worker)
    monitors.throughput.fit_start()
    distributed.fit(
        strategy,
        worker,
        model,
        loader,
        manifest.train,
        manifest.val,
        decoder,
        plan,
        cfg.batch.val * replicas // worker.count,  # this worker's validation batch
        cfg.trainer.seed,
        cfg.trainer.epochs,
        callbacks,
        state_dir / "backup",
        cfg.trainer.verbose,
    )
    mlflow.set_tag("weights_sha256", distributed.weights_sha256(model))  # the same on every worker
    monitors.sampler.sample()
    # A collective: every worker sends its peak; all of them must reach this line.
    peaks = cluster.gather(strategy, [float(monitors.sampler.peak_bytes)])[:, 0]
    figures = {f"peak_rss_mb_worker{i}": float(peak) / MB for i, peak in enumerate(peaks)}
    return figures | {"peak_rss_mb": float(max(peaks)) / MB}


def _read_manifest(cfg: DictConfig) -> tuple[Manifest, dict[str, str]]:
    """The dataset's manifest after the bad-file pass, and what that pass left out."""
    manifest, bad = drop_bad_images(instantiate(cfg.data.manifest), cfg.data.on_bad_image)
    log.info(
        "Data: %d train, %d validation images, classes %s",
        len(manifest.train),
        len(manifest.val),
        list(manifest.class_names),
    )
    return manifest, bad


def _global_batches(cfg: DictConfig, strategy: Any, worker: Worker) -> tuple[int, int]:
    """Batch sizes across all replicas, logged with the replica and worker counts."""
    replicas = strategy.num_replicas_in_sync
    train_batch, val_batch = cfg.batch.train * replicas, cfg.batch.val * replicas
    mlflow.log_params(
        {
            "strategy.replicas": replicas,
            "strategy.workers": worker.count,
            "batch.global_train": train_batch,
            "batch.global_val": val_batch,
        }
    )
    return train_batch, val_batch


@dataclass
class Monitors:
    """Everything that measures the run: memory sampler, GPU peak, throughput."""

    sampler: MemorySampler
    gpu: GpuMemory
    nvml: NvmlMemory
    throughput: ThroughputTracker
    baseline_bytes: int

    @classmethod
    def start(cls, cfg: DictConfig, images_per_epoch: int) -> Monitors:
        """Seed Keras, tag how memory is measured, take the baseline and start sampling."""
        import keras

        keras.utils.set_random_seed(cfg.trainer.seed)
        gpu, nvml = GpuMemory(TensorFlowMemory()), NvmlMemory()
        sampler = MemorySampler(interval_s=cfg.tracking.memory_interval_s, probes=[nvml.sample])
        mlflow.set_tags({"device": gpu.device, "rss_method": sampler.method})
        baseline = sampler.start().sample()
        gpu.reset()
        return cls(sampler, gpu, nvml, ThroughputTracker(images_per_epoch=images_per_epoch), baseline)

    def stop(self) -> dict[str, float]:
        """Stop sampling; the run's summary metrics (only those that were measured)."""
        summary = {"peak_rss_mb": self.sampler.stop() / MB, "baseline_rss_mb": self.baseline_bytes / MB}
        if (gpu_peak := self.gpu.peak_mb()) is not None:
            summary["gpu_peak_mb"] = gpu_peak
        if (device_peak := self.nvml.peak_mb()) is not None:
            summary["gpu_device_peak_mb"] = device_peak  # NVML, all processes: the cross-check
        if (rate := self.throughput.steady_images_per_sec()) is not None:
            summary["images_per_sec"] = rate
        if self.throughput.time_to_first_batch_s is not None:
            summary["time_to_first_batch_s"] = self.throughput.time_to_first_batch_s
        return summary


def _build_model(cfg: DictConfig, spec: ImageSpec, manifest: Manifest, strategy: Any):
    """The compiled model, made in the strategy's scope."""
    with strategy.scope():
        model = instantiate(cfg.model.build, input_shape=spec.shape, num_classes=manifest.num_classes)
        model.compile(
            optimizer=instantiate(cfg.trainer.optimizer),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


def _log_skipped(
    cfg: DictConfig, bad: dict[str, str], at_decode: list[tuple[str, str]], summary: dict[str, float]
) -> None:
    """Under data.on_bad_image=skip: count what was left out, and list it as skipped_images.tsv."""
    if cfg.data.on_bad_image != "skip":
        return
    skipped = {**bad, **dict(at_decode)}
    summary["skipped_images"] = len(skipped)
    if skipped:
        mlflow.log_text(
            "".join(f"{path}\t{reason}\n" for path, reason in skipped.items()), "skipped_images.tsv"
        )


def _log_outcome(cfg: DictConfig, state_dir: Path, run_id: str, summary: dict[str, float]) -> float:
    """best_val_loss (across resumes) and the best checkpoint; returns the best val_loss."""
    best = _best_val_loss(run_id)
    if math.isfinite(best):
        mlflow.log_metric("best_val_loss", best)
    best_file = state_dir / "checkpoints" / "best.keras"
    if cfg.tracking.log_checkpoint and best_file.exists():
        mlflow.log_artifact(str(best_file), "checkpoints")
    log.info("Finished: %s", {k: round(v, 3) for k, v in summary.items()} | {"best_val_loss": best})
    return best


def _callbacks(
    cfg: DictConfig,
    state_dir: Path,
    tracker: ThroughputTracker,
    best: float,
    batch_size: int,
    strategy: Any,
    worker: Worker,
) -> list:
    """The Keras callbacks every run uses: throughput, MLflow metrics, resume state, checkpoint, guards."""
    import keras

    from loaderlab.training.callbacks import EpochMetricsToMlflow, ThroughputCallback
    from loaderlab.training.checkpoint import BestCheckpoint

    callbacks = [ThroughputCallback(tracker, batch_size), EpochMetricsToMlflow()]
    if worker.count == 1:
        # The epoch state that trainer.resume continues from; kept after training ends. (The
        # multi-worker loop checkpoints with TensorFlow's multi-worker checkpointing instead.)
        callbacks.append(keras.callbacks.BackupAndRestore(str(state_dir / "backup"), delete_checkpoint=False))
    if cfg.trainer.checkpoint and worker.is_chief:
        callbacks.append(BestCheckpoint(state_dir / "checkpoints" / "best.keras", best))
    if cfg.trainer.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(patience=cfg.trainer.early_stopping_patience))
    if cfg.trainer.stall_timeout_s:
        from loaderlab.training.watchdog import StallWatchdog

        run_id = mlflow.active_run().info.run_id
        explain = None
        if worker.count > 1:  # a stall there is a lost worker: name it
            from loaderlab.training.distributed import lost_worker_message

            explain = functools.partial(lost_worker_message, strategy, worker)
        fail = functools.partial(tracking.fail_run, run_id)
        callbacks.append(StallWatchdog(cfg.trainer.stall_timeout_s, fail, explain=explain))
    return callbacks


def _best_val_loss(run_id: str) -> float:
    """The lowest val_loss logged to this run so far (resumes included); inf if none."""
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val_loss")
    return min((m.value for m in history), default=math.inf)


def _log_folder_artifacts(output_dir: Path) -> None:
    """Log the job's .hydra/ folder and its log file."""
    if (output_dir / ".hydra").is_dir():
        mlflow.log_artifacts(str(output_dir / ".hydra"), ".hydra")
    for log_file in output_dir.glob("*.log"):
        mlflow.log_artifact(str(log_file))
