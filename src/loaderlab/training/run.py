"""One training job: data, loader, model and fit, measured and logged to MLflow, read top to bottom."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loaderlab import tracking
from loaderlab.data.manifest import Manifest
from loaderlab.data.storage import REDACTED, release_filesystems, secret_values, storage_of
from loaderlab.loaders.base import Feed, Loader, num_batches
from loaderlab.loaders.decode import ImageDecoder, ImageSpec
from loaderlab.run_log import RunLog
from loaderlab.sweep import Sweep, SweepNeighbours, current_sweep, job_run_name
from loaderlab.training import warm_start
from loaderlab.training.context import BACKUP_DIR, RUN_ID_FILE, check_fresh_folder, hydra_facts, state_folder
from loaderlab.training.distribute import Worker, worker_of
from loaderlab.training.evaluate import finish_model
from loaderlab.training.lifecycle import no_child_left, stop_signals_as_interrupt
from loaderlab.training.monitors import Monitors
from loaderlab.utils.errors import build
from loaderlab.utils.system import MB
from loaderlab.validate import augment_of, check_config, check_required, drop_bad_images

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Train one job and return its best val_loss; the MLflow run always ends with a status."""
    check_required(cfg)  # a `???` left: its setting named, before anything reads the config
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
    overrides, isolated, loader_choice = hydra_facts(cfg.paths.output_dir)
    sweep = current_sweep(cfg.paths.output_dir)
    tags = {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "git_commit": tracking.git_commit(),
        "hydra_overrides": overrides,
        "sweep_id": sweep.sweep_id if sweep else "none",
        "process_isolated": str(isolated).lower(),
    }
    parent = sweep.parent_run_id if sweep and worker.is_chief and resumed_run_id is None else None
    # A single job's config error stops it before its MLflow run opens: no FAILED run for a missing
    # value. A sweep's job checks inside its run, so that the sweep's parent names the job that failed.
    checked = None if sweep else _checked(cfg, state_dir, resumed_run_id)
    run_id = None
    try:
        with (
            no_child_left(),
            stop_signals_as_interrupt(),
            tracking.tracked_run(
                uri,
                experiment_id,
                job_run_name(f"{loader_choice}-{cfg.model.name}", overrides, sweep),
                tags,
                state_dir,
                resumed_run_id,
                parent,
                cfg.tracking.outage_wait_s,
            ) as run_log,
        ):
            run_id = run_log.run_id
            if resumed_run_id is None:
                run_log.params(tracking.flatten(cfg))
            else:
                run_log.tags(tags)
            try:
                spec, loader = checked or _checked(cfg, state_dir, resumed_run_id)
                run_id_file.write_text(run_log.run_id)  # only a run that got past the checks is resumable
                name = job_run_name(f"{loader.name}-{cfg.model.name}", overrides, sweep)
                run_log.tags({"loader": loader.name, "mlflow.runName": name})
                return _train_logged(cfg, spec, loader, strategy, worker, state_dir, run_log, sweep)
            finally:
                secrets = secret_values(OmegaConf.to_container(cfg.data).get("storage_options", {}))
                _log_folder_artifacts(run_log, Path(cfg.paths.output_dir), secrets)
                release_filesystems()
    finally:
        if run_id is not None and worker.is_chief:  # in every ending: where to look at what happened
            log.info(tracking.run_links(uri, experiment_id, run_id, cfg.paths.output_dir))


def _checked(cfg: DictConfig, state_dir: Path, resumed_run_id: str | None) -> tuple[ImageSpec, Loader]:
    """The config's checks: its image spec, and the loader built (a bad knob: a ConfigError)."""
    spec = check_config(cfg)
    if resumed_run_id is None:
        check_fresh_folder(state_dir)
    return spec, build(cfg.loader)


@dataclass
class Job:
    """What the steps of one job share. `owned` holds what the job started (feeds, the watchdog),
    so that each stops in every ending: success, an exception, an interrupt."""

    cfg: DictConfig
    strategy: Any
    worker: Worker
    state_dir: Path
    run_log: RunLog
    monitors: Monitors
    best_before: float  # the lowest val_loss earlier jobs of a resumed run reached
    owned: contextlib.ExitStack
    neighbours: SweepNeighbours | None = None  # in a sweep: counts its jobs running at once
    shared_callbacks: list = dataclasses.field(default_factory=list)  # kept from one phase to the next


def _train_logged(
    cfg: DictConfig,
    spec: ImageSpec,
    loader: Loader,
    strategy: Any,
    worker: Worker,
    state_dir: Path,
    run_log: RunLog,
    sweep: Sweep | None = None,
) -> float:
    """The job's steps, in order, inside its MLflow run."""
    if worker.count > 1:
        from loaderlab.training import distributed

        distributed.check_loader(loader, worker)  # before any data work
    manifest, bad = _read_manifest(cfg)
    _log_global_batches(cfg, strategy, worker, run_log)
    decoder = ImageDecoder(spec, cfg.data.on_bad_image, storage_of(cfg.data), augment_of(cfg))
    monitors = Monitors.create(cfg, run_log, images_per_epoch=len(manifest.train))
    best_before = run_log.lowest("val_loss")  # earlier jobs' of a resumed run, kept in its folder
    cluster: dict[str, float] = {}  # multiworker: every worker's peak memory
    neighbours = None
    try:
        with contextlib.ExitStack() as owned:
            if sweep is not None and worker.is_chief:  # how many of the sweep's jobs share the machines
                neighbours = owned.enter_context(
                    SweepNeighbours(sweep.folder, Path(cfg.paths.output_dir).name)
                )
            job = Job(cfg, strategy, worker, state_dir, run_log, monitors, best_before, owned, neighbours)
            monitors.start()  # the baseline: before the pipeline
            if worker.count > 1:
                cluster = _fit_multiworker(job, loader, manifest, decoder)
            else:
                _fit(job, loader, manifest, decoder)
    finally:
        summary = monitors.stop() | cluster
        if neighbours is not None:
            run_log.tags({"parallel_jobs": str(neighbours.most)})
        _log_skipped(cfg, bad, decoder.skipped, summary, run_log)
        run_log.metrics(summary)
    best = _log_outcome(cfg, state_dir, run_log, best_before, summary)
    if worker.is_chief:
        finish_model(cfg, state_dir, run_log, loader, manifest, decoder)
    return best


def _fit(job: Job, loader: Loader, manifest: Manifest, decoder: ImageDecoder) -> None:
    """model.fit on this process's feeds, once per phase (trainer.freeze_epochs: the frozen base first)."""
    from loaderlab.training import recipe
    from loaderlab.training.callbacks import job_callbacks

    cfg, replicas = job.cfg, job.strategy.num_replicas_in_sync
    train_batch, val_batch = cfg.batch.train * replicas, cfg.batch.val * replicas
    train_feed = job.owned.enter_context(
        loader.feed(manifest.train, decoder, train_batch, True, cfg.trainer.seed)
    )
    val_feed = job.owned.enter_context(loader.feed(manifest.val, decoder, val_batch, False, cfg.trainer.seed))
    _log_feed_facts(job.run_log, [train_feed, val_feed])
    model = recipe.build_model(cfg, decoder.spec, manifest.num_classes, job.strategy)
    steps = num_batches(len(manifest.train), train_batch)
    weights = recipe.class_weight_for(cfg.trainer.class_weight, manifest.train.labels, manifest.num_classes)
    train_kwargs = train_feed.fit_kwargs(class_weight=weights)
    start = 0
    for phase in recipe.phases(cfg.trainer):
        trainable = recipe.enter_phase(model, cfg, phase, steps, job.strategy)
        job.run_log.metrics({f"trainable_params{f'_phase{phase.number}' if phase.number else ''}": trainable})
        if start == 0:
            if warm_start.is_run_reference(cfg.model.get("weights")):
                warm_start.load(model, cfg.model.weights, job.run_log)
                warm_start.log_initial_evaluation(model, val_feed, job.run_log)
            job.monitors.throughput.fit_start()  # the clock of time_to_first_batch_s
        model._initial_epoch = None  # Keras keeps the epoch one fit's BackupAndRestore restored for the next
        history = model.fit(
            **train_kwargs,
            **val_feed.validation_kwargs(),
            initial_epoch=max(start, phase.first_epoch),
            epochs=phase.end_epoch,
            callbacks=[*job_callbacks(job, train_batch, phase), *train_feed.callbacks, *val_feed.callbacks],
            verbose=cfg.trainer.verbose,
        )
        start = history.epoch[-1] + 1 if history.epoch else phase.end_epoch
        if phase.number == 1 and start < phase.end_epoch:
            log.warning(
                "A callback (callbacks.early_stopping, say) ended phase 1 after epoch %d of "
                "trainer.freeze_epochs=%d; phase 2 (fine-tuning) starts now.",
                start,
                phase.end_epoch,
            )


def _log_feed_facts(run_log: RunLog, feeds: list[Feed]) -> None:
    """What making the feeds cost (a pack's writing, say), summed over them, and their tags."""
    metrics: dict[str, float] = {}
    for feed in feeds:
        for key, value in feed.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
        if feed.tags:
            run_log.tags(feed.tags)
    if metrics:
        run_log.metrics(metrics)


def _fit_multiworker(job: Job, loader: Loader, manifest: Manifest, decoder: ImageDecoder) -> dict[str, float]:
    """The distributed loop in fit's place; returns every worker's peak memory, gathered on each."""
    from loaderlab.training import cluster, distributed, recipe
    from loaderlab.training.callbacks import job_callbacks

    cfg, strategy, worker = job.cfg, job.strategy, job.worker
    replicas = strategy.num_replicas_in_sync
    plan = distributed.Plan.of(len(manifest.train), worker.count, cfg.batch.train * replicas)
    val_batch = cfg.batch.val * replicas // worker.count  # this worker's
    data = distributed.build_data(
        strategy, worker, loader, manifest.train, manifest.val, decoder, plan, val_batch, cfg.trainer.seed
    )
    job.run_log.params(data.plan.params())
    job.monitors.throughput.images_per_epoch = data.plan.train_images  # all workers' images per epoch
    model = recipe.build_model(cfg, decoder.spec, manifest.num_classes, strategy)
    phase = recipe.phases(cfg.trainer)[0]  # one phase: freeze_epochs is refused with this strategy
    recipe.enter_phase(model, cfg, phase, plan.steps, strategy)
    callbacks = job_callbacks(job, plan.global_batch, phase)
    job.monitors.throughput.fit_start()
    distributed.fit(
        strategy,
        worker,
        model,
        data,
        cfg.trainer.epochs,
        callbacks,
        job.state_dir / BACKUP_DIR,
        cfg.trainer.verbose,
    )
    job.run_log.tags({"weights_sha256": distributed.weights_sha256(model)})  # the same on every worker
    sampler = job.monitors.sampler
    sampler.sample()
    # A collective: every worker sends its peak; all of them must reach this line.
    peaks = cluster.gather(strategy, [float(sampler.peak_bytes)])[:, 0]
    figures = {f"peak_rss_mb_worker{i}": float(peak) / MB for i, peak in enumerate(peaks)}
    return figures | {"peak_rss_mb": float(max(peaks)) / MB}


def _read_manifest(cfg: DictConfig) -> tuple[Manifest, dict[str, str]]:
    """The dataset's manifest after the bad-file pass, and what that pass left out."""
    manifest, bad = drop_bad_images(
        build(cfg.data.manifest),
        cfg.data.on_bad_image,
        Path(cfg.paths.outputs) / "verdicts",
        progress=cfg.trainer.verbose != 0,
    )
    from loaderlab.training.recipe import debug_subset

    manifest = debug_subset(cfg.trainer, cfg.batch.train, manifest)
    log.info(
        "Data: %d train, %d validation images, classes %s",
        len(manifest.train),
        len(manifest.val),
        list(manifest.class_names),
    )
    return manifest, bad


def _log_global_batches(cfg: DictConfig, strategy: Any, worker: Worker, run_log: RunLog) -> None:
    """Batch sizes across all replicas, logged with the replica and worker counts."""
    replicas = strategy.num_replicas_in_sync
    train_batch, val_batch = cfg.batch.train * replicas, cfg.batch.val * replicas
    run_log.params(
        {
            "strategy.replicas": replicas,
            "strategy.workers": worker.count,
            "batch.global_train": train_batch,
            "batch.global_val": val_batch,
        }
    )


def _log_skipped(
    cfg: DictConfig,
    bad: dict[str, str],
    at_decode: list[tuple[str, str]],
    summary: dict[str, float],
    run_log: RunLog,
) -> None:
    """Under data.on_bad_image=skip: count what was left out, and list it as skipped_images.tsv."""
    if cfg.data.on_bad_image != "skip":
        return
    skipped = {**bad, **dict(at_decode)}
    summary["skipped_images"] = len(skipped)
    if skipped:
        run_log.text("".join(f"{path}\t{reason}\n" for path, reason in skipped.items()), "skipped_images.tsv")


def _log_outcome(
    cfg: DictConfig, state_dir: Path, run_log: RunLog, best_before: float, summary: dict[str, float]
) -> float:
    """best_val_loss (across resumes) and the best checkpoint; returns the best val_loss."""
    best = min(best_before, run_log.lowest("val_loss"))
    if math.isfinite(best):
        run_log.metrics({"best_val_loss": best})
    best_file = state_dir / "checkpoints" / "best.keras"
    if cfg.tracking.log_checkpoint and best_file.exists():
        run_log.artifact(best_file, "checkpoints")
    log.info("Finished: %s", {k: round(v, 3) for k, v in summary.items()} | {"best_val_loss": best})
    return best


def _log_folder_artifacts(run_log: RunLog, output_dir: Path, secrets: list[str]) -> None:
    """Log the job's .hydra/ folder and its log file; copies with `secrets` scrubbed when there are any."""
    if (output_dir / ".hydra").is_dir():
        run_log.artifact(_scrubbed(output_dir / ".hydra", output_dir, secrets), ".hydra")
    for log_file in output_dir.glob("*.log"):
        run_log.artifact(_scrubbed(log_file, output_dir, secrets))


def _scrubbed(source: Path, output_dir: Path, secrets: list[str]) -> Path:
    """`source` itself, or with secrets: a copy under <output_dir>/redacted/ with each one as ***."""
    if not secrets:
        return source
    target = output_dir / "redacted" / source.relative_to(output_dir)
    for path in [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        copy = target / path.relative_to(source) if source.is_dir() else target
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text)
    return target
