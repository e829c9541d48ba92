"""The four loaders: same pixels, the preprocessing spec, bounded memory, and the in-memory guard."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from helpers import write_image
from loaderlab.data.folder import folder_manifest
from loaderlab.data.synthetic import generate
from loaderlab.loaders import Feed, ImageDecoder, ImageSpec, decode_resize
from loaderlab.loaders.generator import GeneratorLoader
from loaderlab.loaders.inmemory import InMemoryLoader, InsufficientMemoryError
from loaderlab.monitor import MemorySampler

LOADER_NAMES = ["inmemory", "generator", "sequence", "tfdata"]


def make_loader(name: str, **kwargs):
    if name == "inmemory":
        return InMemoryLoader(**kwargs)
    if name == "generator":
        return GeneratorLoader()
    if name == "sequence":
        from loaderlab.loaders.sequence import SequenceLoader

        return SequenceLoader(workers=2, **kwargs)
    from loaderlab.loaders.tfdata import TFDataLoader

    return TFDataLoader(**kwargs)


def one_pass(feed: Feed):
    """Yield (images, labels) batches of one pass over a feed, whatever its kind."""
    if feed.y is not None:
        for i in range(0, len(feed.y), feed.batch_size):
            yield feed.x[i : i + feed.batch_size], feed.y[i : i + feed.batch_size]
    elif feed.steps is not None:
        yield from itertools.islice(feed.x, feed.steps)
    elif hasattr(feed.x, "__getitem__"):
        for i in range(len(feed.x)):
            yield feed.x[i]
    else:
        for images, labels in feed.x:
            yield images.numpy(), labels.numpy()


def collect(feed: Feed) -> tuple[np.ndarray, np.ndarray]:
    batches = list(one_pass(feed))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


@pytest.fixture(scope="module")
def manifest(tiny_root: Path):
    return folder_manifest(str(tiny_root), val_fraction=0.25)


@pytest.mark.parametrize("channels", [3, 1])
def test_all_loaders_yield_the_same_pixels(manifest, channels: int) -> None:
    spec = ImageSpec(36, 28, channels)  # not square: catches width/height swaps
    outputs = {}
    for name in LOADER_NAMES:
        loader = make_loader(name, deterministic=True) if name == "tfdata" else make_loader(name)
        feed = loader.feed(manifest.val, ImageDecoder(spec), batch_size=7, training=False)
        outputs[name] = collect(feed)
    images, labels = outputs["inmemory"]
    assert images.shape == (len(manifest.val), 36, 28, channels) and images.dtype == np.uint8
    assert np.array_equal(labels, manifest.val.labels)
    for name, (other_images, other_labels) in outputs.items():
        assert other_images.dtype == np.uint8
        assert np.array_equal(other_labels, labels), name
        diff = np.abs(other_images.astype(np.float32) - images).mean()
        assert diff <= 1.0, f"{name} differs from inmemory by {diff:.3f} grey levels"


def test_spec_matches_tensorflows_own_decoder(manifest) -> None:
    """An independent decoder (TF: RGB, bilinear, half-pixel) agrees: no BGR, no axis swap."""
    import tensorflow as tf

    spec = ImageSpec(36, 28, 3)
    for path in manifest.val.paths[:8]:
        ours = decode_resize(path, spec).astype(np.float32)
        theirs = tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), (36, 28)).numpy()
        assert np.abs(ours - theirs).mean() <= 1.5


def test_colour_order_and_shape(tmp_path: Path) -> None:
    path = write_image(tmp_path / "red", size=(20, 50), color_rgb=(250, 10, 10), ext=".png")
    image = decode_resize(str(path), ImageSpec(10, 30, 3))
    assert image.shape == (10, 30, 3)
    assert image[5, 15].tolist() == [250, 10, 10]  # RGB, not OpenCV's BGR
    grey = decode_resize(str(path), ImageSpec(10, 30, 1))
    assert grey.shape == (10, 30, 1) and abs(int(grey[5, 15, 0]) - 81) <= 2  # 0.299R+0.587G+0.114B


@pytest.mark.parametrize("name", ["generator", "sequence", "tfdata"])  # inmemory: model.fit shuffles
def test_training_feeds_reshuffle_every_epoch(manifest, name: str) -> None:
    feed = make_loader(name).feed(manifest.train, ImageDecoder(ImageSpec(8, 8)), 1000, training=True, seed=1)
    if feed.steps is not None:  # endless generator: two consecutive passes
        first, second = next(feed.x)[1], next(feed.x)[1]
    elif hasattr(feed.x, "on_epoch_end"):
        first = feed.x[0][1]
        feed.x.on_epoch_end()
        second = feed.x[0][1]
    else:
        first, second = (next(iter(feed.x))[1].numpy() for _ in range(2))
    assert sorted(first) == sorted(second) == sorted(manifest.train.labels)
    assert not np.array_equal(first, second)


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many") / "ds"
    generate(root, num_images=1200, image_size=32, num_classes=4, seed=0, progress=False)
    return root


@pytest.mark.parametrize("name", LOADER_NAMES)
def test_streaming_loaders_never_hold_the_decoded_dataset(many_files: Path, name: str) -> None:
    """Peak memory over a full pass stays far below the decoded dataset, except for inmemory."""
    manifest = folder_manifest(str(many_files), val_fraction=0.1)
    spec = ImageSpec(160, 160, 3)  # 75 KB per image: ~80 MB for the 1080 training images
    dataset_bytes = len(manifest.train) * spec.nbytes
    loader = make_loader(name)
    warm = loader.feed(manifest.val, ImageDecoder(spec), 16, training=False)
    collect(warm)  # first-use costs of the framework are not the loader's
    del warm
    sampler = MemorySampler(interval_s=0.01)
    baseline = sampler.start().sample()
    feed = loader.feed(manifest.train, ImageDecoder(spec), 16, training=True)
    count = sum(len(labels) for _, labels in one_pass(feed))
    growth = sampler.stop() - baseline
    assert count == len(manifest.train)
    if loader.streaming:
        # batch 16 x queue depth x 75 KB is a few MB; the dataset is ~80 MB
        assert growth < 0.35 * dataset_bytes, f"{name} grew {growth / 2**20:.0f} MB"
    else:
        assert growth > 0.9 * dataset_bytes, f"{name} grew only {growth / 2**20:.0f} MB"


def test_inmemory_guard_refuses_before_allocating(manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ImageSpec(224, 224, 3)
    monkeypatch.setattr("loaderlab.loaders.inmemory.available_memory", lambda: 10 * 2**20)  # 10 MB "free"
    loader = InMemoryLoader(memory_fraction=0.5)
    with pytest.raises(InsufficientMemoryError) as e:
        loader.feed(manifest.train, ImageDecoder(spec), 8, training=True)
    message = str(e.value)
    array_mb = len(manifest.train) * spec.nbytes / 2**20
    assert f"needs about {2 * array_mb:,.0f} MB" in message and f"a {array_mb:,.0f} MB array" in message
    assert "10 MB is available" in message
    assert "loader=tfdata" in message
    monkeypatch.setattr("loaderlab.loaders.inmemory.available_memory", lambda: 10 * 2**30)
    fits = InMemoryLoader().feed(manifest.train, ImageDecoder(spec), 8, True)
    assert fits.x.shape == (len(manifest.train), 224, 224, 3)
