"""Measuring one entry, in the process that runs it: warm-up, timed passes, memory sampled throughout."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from loaderlab.benchmark.entries import CONF_DIR, DECODE_LIMIT, loader_config, split_entry
from loaderlab.benchmark.limit import (
    decode_limit_pass,
    decode_threads_pass,
    limit_sources,
    reads,
    stored_limit_pass,
)
from loaderlab.utils.system import MB

SEED = 0  # the shuffle seed of training passes
KERAS_PATH = "keras_TFEpochIterator"  # batches pulled as model.fit pulls them
PLAIN_PATH = "plain_iteration"  # a Keras without that internal: the input iterated directly


@dataclass
class EntryResult:
    """What one entry measured in its own process."""

    entry: str
    images_per_sec: float
    pass_images_per_sec: list[float]
    images_per_pass: int
    peak_rss_mb: float
    baseline_rss_mb: float
    rss_method: str
    params: dict[str, Any] = field(default_factory=dict)  # the entry's own knobs and how it was timed
    extra_metrics: dict[str, float] = field(default_factory=dict)


def mean_rate(rates: Sequence[float]) -> float:
    """Images over time across passes (the harmonic mean of equal-sized passes)."""
    return len(rates) / sum(1.0 / r for r in rates)


def measure_entry(
    entry: str,
    root: str,
    input_size: int,
    batch_size: int,
    passes: int,
    cores: int,
    conf_dir: Path = CONF_DIR,
    augment: str = "none",
) -> EntryResult:
    """Measure one entry in this process: one warm-up pass, then `passes` timed ones. `augment`: the
    invocation's (--augment), unless the entry sets its own (`tfdata augment=rrc`)."""
    from loaderlab.benchmark.peers import PEERS, build_peer, spec_match
    from loaderlab.data.folder import scan_class_folders
    from loaderlab.data.manifest import make_split
    from loaderlab.loaders.augment import Augment
    from loaderlab.loaders.decode import ImageDecoder, ImageSpec
    from loaderlab.monitor import MemorySampler

    name, overrides = split_entry(entry)
    options = {
        o.split("=", 1)[0].removeprefix("peer."): int(o.split("=", 1)[1])
        for o in overrides
        if o.startswith("peer.")
    }
    overrides = [o for o in overrides if not o.startswith("peer.")]
    augment = next((o.split("=", 1)[1] for o in overrides if o.startswith("augment=")), augment)
    knobs = [o for o in overrides if o.startswith("augment.")]  # e.g. augment.zoom=0.2 for layers
    overrides = [o for o in overrides if not o.startswith("augment")]
    layers = _augment_layers(conf_dir, knobs) if augment == "layers" else None
    if name != DECODE_LIMIT:
        import tensorflow as tf  # noqa: F401  imported before the baseline, as in a training run

    paths, labels, _ = scan_class_folders(root)
    split = make_split(paths, labels)
    spec = ImageSpec(input_size, input_size, 3)
    # The decoder also tunes the allocator as the loaders run it: every entry shares it.
    # on_bad_image=skip: a bad file in a user's folder is left out by the loaders, not fatal to the run.
    draw = Augment(augment if augment != "layers" else "none", seed=SEED)
    decoder = ImageDecoder(spec, on_bad_image="skip", augment=draw)
    sampler = MemorySampler()
    baseline = sampler.sample()
    sampler.interval_s = _sampling_interval(sampler)
    sampler.start()
    extra: dict[str, float] = {}  # a loader's one-time costs; the limit's one-core rate; a peer's PSNR
    loader = peer = None
    try:
        if name == DECODE_LIMIT:
            sources = limit_sources(split, decoder)
            run_pass, params = decode_limit_pass(sources, decoder), {"limit_reads": reads(split)}
        elif name in PEERS:
            fit_runner = functools.partial(_fit_pass_runner, layers=layers)
            peer = build_peer(name, root, input_size, batch_size, cores, augment, fit_runner, options)
            run_pass, params = peer.run_pass, peer.params
            if augment != "rrc":  # drawn crops match no fixed decode
                match = spec_match(peer.sample, peer.sample_paths, spec)
                extra["psnr_db"], params = match["psnr_db"], params | {"output": match["output"]}
        else:
            run_pass, params, costs, loader = _loader_pass(
                name, overrides, conf_dir, split, decoder, batch_size, layers
            )
            extra.update(costs)
        # A packed loader: the limit of the JPEGs it stores as well, measured before and after its
        # passes so that the machine's drift cancels.
        stored_pass = stored_limit_pass(loader, split, decoder) if hasattr(loader, "pack") else None
        stored_rates = _timed_passes(stored_pass, passes).rates if stored_pass else []
        rates, images, extra["cores_busy"] = _timed_passes(run_pass, passes, after_passes=sampler.sample)
        if stored_pass:
            stored_rates += _timed_passes(stored_pass, passes).rates
            extra["stored_limit_images_per_sec"] = mean_rate(stored_rates) * cores
            extra["ratio_to_stored_limit"] = mean_rate(rates) / extra["stored_limit_images_per_sec"]
    finally:
        peak = sampler.stop()
        if peer is not None:
            peer.close()
    if name == DECODE_LIMIT:  # one thread's rate; the limit is that rate on every core
        extra["one_core_images_per_sec"] = mean_rate(rates)
        rates = [r * cores for r in rates]
        # What plain threads reach with every core decoding at once: how far this machine scales.
        together = _timed_passes(decode_threads_pass(sources, decoder, cores), passes).rates
        extra["all_cores_ratio"] = mean_rate(together) / mean_rate(rates)
    return EntryResult(
        entry=entry,
        images_per_sec=mean_rate(rates),
        pass_images_per_sec=rates,
        images_per_pass=images,
        peak_rss_mb=peak / MB,
        baseline_rss_mb=baseline / MB,
        rss_method=sampler.method,
        params={**params, "augment": augment, "memory_interval_s": round(sampler.interval_s, 3)},
        extra_metrics=extra,
    )


class Passes(NamedTuple):
    """Timed passes: each pass's images/s, the images in a pass, and the cores kept busy."""

    rates: list[float]
    images: int
    cores_busy: float  # CPU seconds per second of the passes, its worker processes' and sampler's included


def _timed_passes(
    run_pass: Callable[[], int], passes: int, after_passes: Callable[[], object] | None = None
) -> Passes:
    """One untimed warm-up pass, then `passes` timed ones back to back.

    `after_passes` runs once the last pass has ended (a memory sample while its data is alive). Not
    between passes: a pipeline that reads ahead would fill its buffers in the gap, untimed.
    """
    images = run_pass()  # warm-up: tracing, thread pools and the page cache are not the loader's cost
    rates = []
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    for _ in range(passes):
        start = time.perf_counter()
        counted = run_pass()
        elapsed = time.perf_counter() - start
        if counted != images:
            raise RuntimeError(
                f"A timed pass yielded another count of images than the warm-up, so no rate compares: a "
                "file changed or broke during the run, or the loader left out a bad one. Check the "
                f"folder with python src/train.py data=folder data.root=<root> debug=fast. Received: "
                f"{counted} images, the warm-up {images}"
            )
        rates.append(counted / elapsed)
    cores_busy = (_cpu_seconds() - cpu_start) / (time.perf_counter() - wall_start)
    if after_passes:
        after_passes()
    return Passes(rates, images, cores_busy)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live children (Grain's or a PyDataset's worker processes)."""
    import psutil

    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # ended meanwhile
            pass
    return total


def _augment_layers(conf_dir: Path, knobs: list[str]) -> Any:
    """augment=layers as conf/augment/layers.yaml composes it, with the entry's `augment.<knob>=` overrides:
    Keras' random layers, on [0, 255] floats."""
    import keras
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from loaderlab.models.layers import augmentation

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        knobs = OmegaConf.to_container(
            compose("config", overrides=["augment=layers", *knobs]).augment, resolve=True
        )
    return keras.Sequential(augmentation(knobs, (0.0, 255.0)))


def _fit_pass_runner(
    fit_kwargs: dict[str, Any], layers: Any = None
) -> tuple[Callable[[], int], dict[str, str]]:
    """One epoch of batches through model.fit's own data path, minus the model; and which path ran.
    `layers`: augment=layers' random layers, applied to each batch as the model's first layers would.

    Keras' TF trainer wraps every input (tf.data, PyDataset, generator) in a TFEpochIterator and
    pulls each batch inside a tf.function; doing the same counts the wrapping costs fit pays. It is
    a Keras internal, so the path taken is recorded: a Keras upgrade cannot change the figures unseen.
    """
    import tensorflow as tf

    try:
        from keras.src.backend.tensorflow.trainer import TFEpochIterator
    except ImportError:
        if layers is not None:
            raise RuntimeError(
                "augment=layers needs Keras' TFEpochIterator, which this Keras lacks"
            ) from None
        return _plain_pass_runner(fit_kwargs), {"batch_path": PLAIN_PATH}

    epochs = TFEpochIterator(
        x=fit_kwargs["x"],
        steps_per_epoch=fit_kwargs.get("steps_per_epoch"),
        shuffle=False,
        distribute_strategy=tf.distribute.get_strategy(),
    )
    epochs.reset()

    @tf.function
    def step(iterator: Any) -> tf.Tensor:
        images, labels = next(iterator)[:2]
        if layers is not None:
            images = layers(tf.cast(images, tf.float32), training=True)
        # Count the images by a test on their pixels, as a model's first layer would read them: Grappler
        # cannot prove it true, so nothing before it (augment=layers' ops) can be pruned as unused.
        return tf.reduce_sum(tf.cast(tf.cast(images[:, 0, 0, 0], tf.float32) > -1.0, tf.int32))

    def run_pass() -> int:
        count = 0
        with epochs.catch_stop_iteration():
            for _begin, _end, iterator in epochs:
                count += int(step(iterator))
        return count

    return run_pass, {"batch_path": KERAS_PATH}


def _plain_pass_runner(fit_kwargs: dict[str, Any]) -> Callable[[], int]:
    """One epoch by plain iteration, each batch copied to NumPy."""
    import numpy as np

    x, steps = fit_kwargs["x"], fit_kwargs.get("steps_per_epoch")

    def batches() -> Iterable:
        if steps:  # an endless generator
            return itertools.islice(x, steps)
        if hasattr(x, "__getitem__"):  # a PyDataset
            return (x[i] for i in range(len(x)))
        return x  # a tf.data.Dataset

    def run_pass() -> int:
        count = 0
        for images, labels, *_ in batches():
            np.asarray(images).max()  # touch the pixels
            count += len(np.asarray(labels))
        return count

    return run_pass


def _sampling_interval(sampler: Any, floor_s: float = 0.05, max_share: float = 0.02) -> float:
    """An interval at which memory sampling takes at most `max_share` of one core.

    A PSS sample of a process that maps TensorFlow walks every mapping; sampled too often it would
    take the very cores being timed. Samples after each pass, outside the timing, catch what a pass
    holds at its end.
    """
    costs = []
    for _ in range(3):
        start = time.perf_counter()
        sampler.sample()
        costs.append(time.perf_counter() - start)
    return max(floor_s, sorted(costs)[1] / max_share)


def _loader_pass(
    name: str, overrides: list[str], conf_dir: Path, split: Any, decoder: Any, batch_size: int, layers: Any
) -> tuple[Callable[[], int], dict[str, Any], dict[str, float], Any]:
    """One training pass of a loader built from its composed config, its knobs as params, what
    making its feed cost once (a pack's writing, kept apart from the timed passes), and the loader."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = loader_config(name, overrides, conf_dir)
    params = {f"loader.{k}": v for k, v in OmegaConf.to_container(cfg, resolve=True).items()}
    loader = instantiate(cfg)
    if loader.streaming:
        feed = loader.feed(split, decoder, batch_size, training=True, seed=SEED)
        run_pass, path = _fit_pass_runner(feed.fit_kwargs(), layers)
        return run_pass, params | path, feed.metrics, loader
    held: list[Any] = []

    def run_pass() -> int:
        # Loading the array is this loader's whole input cost; fit then only slices memory.
        held.clear()  # the previous pass's array goes first, as it would in a fresh run
        held.append(loader.feed(split, decoder, batch_size, training=True, seed=SEED))
        return len(held[0].y)  # held until the sample after the pass has seen it

    return run_pass, params, {}, loader
