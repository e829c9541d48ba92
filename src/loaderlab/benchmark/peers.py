"""The peers: other libraries' input pipelines, each as its users would write it at its documented best.

A peer builds its own pipeline over the class-folder root and hands it to `fit_runner`, which times
it as model.fit pulls batches, as it does the loaders. `sample` holds its first batch's images and
their files, which `spec_match` compares with loaderlab's spec.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KERAS_FROM_DIRECTORY = "keras_image_dataset_from_directory"
KERAS_GRAIN = "keras_grain"
DALI_CPU = "dali_cpu"
GRAIN = "grain"
PEERS = (KERAS_FROM_DIRECTORY, KERAS_GRAIN, DALI_CPU, GRAIN)
SAMPLE = 16  # images of the first batch compared with the spec
SEED = 0


class PeerUnavailableError(RuntimeError):
    """The peer cannot run here (a library missing or too old); the message says how to get it."""


@dataclass
class PeerPipeline:
    """A peer's pipeline: its pass runner, its params, and a sample of its output with the files."""

    run_pass: Callable[[], int]
    params: dict[str, Any]
    sample: np.ndarray | None = None  # up to SAMPLE images as the peer yields them
    sample_paths: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None  # stops what the peer started (Grain's worker processes)


def unavailable(name: str) -> str | None:
    """Why a peer cannot run in this environment, with how to fix it; None when it can."""
    if name == KERAS_GRAIN:
        import keras

        if "format" not in inspect.signature(keras.utils.image_dataset_from_directory).parameters:
            return f"Keras {keras.__version__} has no format= (3.15 has it): pip install -U keras"
    if name in (KERAS_GRAIN, GRAIN) and not _importable("grain"):
        return 'Grain is not installed: pip install -e ".[peers]"'
    if name == DALI_CPU and not _importable("nvidia.dali"):
        return 'DALI is not installed: pip install -e ".[peers]" (its CPU pipelines need no GPU)'
    return None


def build_peer(
    name: str,
    root: str,
    input_size: int,
    batch_size: int,
    cores: int,
    augment: str,
    fit_runner: Callable,
    options: dict[str, int] | None = None,
) -> PeerPipeline:
    """The peer's pipeline over `root`; `fit_runner` times a Keras-fit-able input as model.fit pulls it.
    `augment`: none, rrc (dali_cpu's crop decode) or layers (Keras' layers, after a Keras peer);
    `options`: the entry's `peer.<knob>=` overrides (grain: workers, threads)."""
    options = options or {}
    known = {"workers", "threads"} if name == GRAIN else set()
    if set(options) - known:
        raise ValueError(
            f"{name} takes the overrides {sorted(f'peer.{k}' for k in known) or 'none'}. "
            f"Received: {', '.join(f'peer.{k}={v}' for k, v in options.items())}"
        )
    reason = unavailable(name)
    if reason:
        raise PeerUnavailableError(f"{name}: {reason}")
    if "://" in root:
        raise PeerUnavailableError(f"{name} reads local folders only. Received: root={root}")
    keras_peer = name in (KERAS_FROM_DIRECTORY, KERAS_GRAIN)
    if not (
        augment == "none" or (augment == "rrc" and name == DALI_CPU) or (augment == "layers" and keras_peer)
    ):
        raise PeerUnavailableError(
            f"{name} has no {augment!r}: dali_cpu alone crops at the decode (rrc), and Keras' layers "
            f"follow the Keras peers only. Received: augment={augment}"
        )
    if keras_peer:
        return _keras(root, input_size, batch_size, "grain" if name == KERAS_GRAIN else "tf", fit_runner)
    if name == DALI_CPU:
        return _dali(root, input_size, batch_size, cores, augment == "rrc", fit_runner)
    return _grain(root, input_size, batch_size, cores, fit_runner, **options)


def spec_match(sample: np.ndarray, paths: list[str], spec: Any) -> dict[str, Any]:
    """The peer's output against loaderlab's decode of the same files: shape, dtype, and PSNR in dB
    (the median over the sample; inf where the pixels are equal)."""
    from loaderlab.loaders.decode import decode_resize

    ours = np.stack([decode_resize(p, spec) for p in paths]).astype(np.float64)
    theirs = np.asarray(sample)
    facts = {"output": f"{theirs.dtype} {'x'.join(map(str, theirs.shape[1:]))}"}
    if theirs.shape[1:] != ours.shape[1:]:
        return facts | {"psnr_db": float("nan")}
    mse = ((np.clip(theirs.astype(np.float64), 0, 255) - ours) ** 2).mean(axis=(1, 2, 3))
    psnr = [math.inf if m == 0 else 10 * math.log10(255**2 / m) for m in mse]
    return facts | {"psnr_db": float(np.median(psnr))}


def _keras(root: str, input_size: int, batch_size: int, fmt: str, fit_runner: Callable) -> PeerPipeline:
    """keras.utils.image_dataset_from_directory, timed through model.fit's data path."""
    import keras

    kwargs = {"format": fmt} if fmt != "tf" else {}
    dataset = keras.utils.image_dataset_from_directory(
        root,
        batch_size=batch_size,
        image_size=(input_size, input_size),
        shuffle=False,
        verbose=False,
        **kwargs,
    )  # format="tf" already ends in .prefetch(AUTOTUNE)
    paths = list(dataset.file_paths[:SAMPLE])
    images = next(iter(dataset))[0]
    run_pass, params = fit_runner({"x": dataset})
    sample = np.asarray(images)[: len(paths)]
    return PeerPipeline(run_pass, params | {"peer_format": fmt}, sample, paths)


def _dali(
    root: str, input_size: int, batch_size: int, cores: int, rrc: bool, fit_runner: Callable
) -> PeerPipeline:
    """A DALI CPU pipeline (readers.file, decoders.image or image_random_crop, resize), its batches
    handed to model.fit as a Python generator: DALI's TF plugin is built per TensorFlow release."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=cores, device_id=None, prefetch_queue_depth=2, seed=SEED)
    def pipeline():  # noqa: ANN202  DALI's graph-building function
        jpegs, labels = fn.readers.file(
            file_root=root, random_shuffle=False, name="files", pad_last_batch=True
        )
        if rrc:
            images = fn.decoders.image_random_crop(
                jpegs, device="cpu", output_type=types.RGB, random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3],
            )  # fmt: skip
            images = fn.flip(
                fn.resize(images, size=[input_size, input_size]), horizontal=fn.random.coin_flip()
            )
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, size=[input_size, input_size])
        return images, labels, fn.get_property(jpegs, key="source_info")

    pipe = pipeline()
    pipe.build()
    total = pipe.epoch_size("files")
    steps = math.ceil(total / batch_size)

    def batches() -> Any:  # endless: model.fit takes `steps` of them per epoch
        for step in itertools.count():
            images, labels, _ = pipe.run()
            # An epoch's last batch is padded with repeats of its last file: only the real ones go on.
            real = min(batch_size, total - step % steps * batch_size)
            yield images.as_array()[:real], labels.as_array()[:real, 0]

    # The first batch, for the spec check. Any `steps` batches in a row hold one padded batch, so the
    # passes that follow still count every image once.
    images, _, sources = pipe.run()
    count = min(SAMPLE, batch_size)
    paths = [os.path.join(root, bytes(sources.at(i)).decode()) for i in range(count)]  # under file_root
    run_pass, params = fit_runner({"x": batches(), "steps_per_epoch": steps})
    params |= {"dali_threads": cores, "dali_prefetch_queue_depth": 2}
    return PeerPipeline(run_pass, params, images.as_array()[:count], paths)


def _grain_load(item: tuple[str, int], size: int) -> tuple[np.ndarray, int]:
    """One file as a Grain user writes it with OpenCV: read, to RGB, resize (area for shrinking)."""
    import cv2

    path, label = item
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"OpenCV could not decode {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), label


def _grain(
    root: str,
    input_size: int,
    batch_size: int,
    cores: int,
    fit_runner: Callable,
    workers: int | None = None,
    threads: int | None = None,
) -> PeerPipeline:
    """Grain's MapDataset, batched and repeated, read by `cores` worker processes (mp_prefetch); one
    iterator, handed to model.fit with steps per epoch, so that the workers start once."""
    import grain

    from loaderlab.data.folder import scan_class_folders

    paths, labels, _ = scan_class_folders(root)
    items = list(zip(paths, (int(v) for v in labels), strict=True))
    steps = math.ceil(len(items) / batch_size)
    workers = cores if workers is None else workers
    threads = threads or (cores if workers == 0 else 1)  # in-process: a thread per core
    dataset = (
        grain.MapDataset.source(items)
        .map(functools.partial(_grain_load, size=input_size))
        .batch(batch_size)
        .repeat()  # after batch: every pass is whole batches of one epoch
        # Grain's default read-ahead is 500 elements, here batches: gigabytes. Two per worker suffice.
        .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    )
    iterator = iter(dataset)  # one iterator for every pass: its workers start once
    # The first batch, for the spec check; any `steps` batches in a row still hold every image once.
    images, _ = next(iterator)
    count = min(SAMPLE, len(items))
    try:  # Keras takes a generator, not Grain's iterator
        run_pass, params = fit_runner({"x": (batch for batch in iterator), "steps_per_epoch": steps})
    except BaseException:
        iterator.close()
        raise
    params |= {"grain_workers": workers, "grain_threads": threads}
    # Closed by the caller: a process that ends without it leaves Grain's workers holding its pipes.
    return PeerPipeline(run_pass, params, np.asarray(images)[:count], paths[:count], iterator.close)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
