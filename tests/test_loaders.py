"""The four loaders: same pixels, the preprocessing spec, bounded memory, and the in-memory guard."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PACK_ROOT
from helpers import LOADER_NAMES, collect, make_mixed_dataset, make_named_loader, write_image
from loaderlab.data.folder import folder_manifest
from loaderlab.data.synthetic import generate
from loaderlab.loaders import ImageDecoder, ImageSpec, decode_resize
from loaderlab.loaders.inmemory import InMemoryLoader, InsufficientMemoryError


def make_loader(name: str, **kwargs):
    """A loader by name, its packs in the session's pack folder."""
    return make_named_loader(name, PACK_ROOT[0], **kwargs)


@pytest.fixture(scope="module")
def manifest(tiny_root: Path):
    return folder_manifest(str(tiny_root), val_fraction=0.25)


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory):
    """Images that decode at every libjpeg scale, baseline and progressive, grey and PNG too."""
    root = make_mixed_dataset(tmp_path_factory.mktemp("mixed") / "ds")
    return folder_manifest(str(root), val_fraction=0.5)


@pytest.mark.parametrize("data", ["manifest", "mixed_manifest"])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("channels", [3, 1])
def test_all_loaders_yield_the_same_pixels(request, data: str, scaled: bool, channels: int) -> None:
    manifest = request.getfixturevalue(data)
    spec = ImageSpec(36, 28, channels, scaled)  # not square: catches width/height swaps
    outputs = {}
    for name in [*LOADER_NAMES, "tfdata-tf"]:
        if name.startswith("tfdata"):
            loader = make_loader("tfdata", deterministic=True, decode=name.partition("-")[2] or "opencv")
        else:
            loader = make_loader(name)
        feed = loader.feed(manifest.val, ImageDecoder(spec), batch_size=7, training=False)
        outputs[name] = collect(feed)
    images, labels = outputs["inmemory"]
    assert images.shape == (len(manifest.val), 36, 28, channels) and images.dtype == np.uint8
    assert np.array_equal(labels, manifest.val.labels)
    assert np.array_equal(images, np.stack([decode_resize(p, spec) for p in manifest.val.paths]))
    for name, (other_images, other_labels) in outputs.items():
        assert other_images.dtype == np.uint8
        assert np.array_equal(other_labels, labels), name
        if name == "tfdata-tf":
            # The same libjpeg decode at the same scale; OpenCV's fixed-point bilinear and TF's
            # float one round apart by at most one grey level.
            assert np.abs(other_images.astype(int) - images).max() <= 1
        elif name == "packed":  # the spec's pixels re-encoded once (fidelity: test_packed's PSNR)
            # These tiny images are mostly sensor-like noise, JPEG's worst case: about 4 grey levels
            # on average; a channel or axis swap would be tens.
            assert other_images.shape == images.shape
            assert np.abs(other_images.astype(int) - images).mean() <= 6, name
        else:
            assert np.array_equal(other_images, images), f"{name} differs from inmemory"


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


@pytest.mark.parametrize("name", ["generator", "sequence", "tfdata", "packed"])  # inmemory: fit shuffles
def test_training_feeds_reshuffle_every_epoch(manifest, name: str) -> None:
    feed = make_loader(name).feed(manifest.train, ImageDecoder(ImageSpec(8, 8)), 1000, training=True, seed=1)
    if feed.steps is not None:  # endless (a generator, packed's tf.data): two consecutive passes
        stream = iter(feed.x)
        first, second = (np.asarray(next(stream)[1]) for _ in range(2))
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


def memory_growth(name: str, root: Path, images: int) -> dict:
    """What one training pass over `images` images added to a fresh process (tests/memory_probe.py)."""
    probe = Path(__file__).with_name("memory_probe.py")
    command = [sys.executable, str(probe), name, str(root), str(images), str(PACK_ROOT[0]), str(PROBE_SIZE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY_PROBE ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("MEMORY_PROBE "))


PROBE_SIZE = 320  # 300 KB a decoded image: the 3N more images of 4N decode to 220 MB
PROBE_IMAGES = 250  # 4N: the 1,000 first of many_files' 1,080 training images


@pytest.mark.slow
@pytest.mark.parametrize("name", LOADER_NAMES)
def test_streaming_loaders_memory_does_not_grow_with_the_dataset(many_files: Path, name: str) -> None:
    """A pass over 4N images adds no more memory than a pass over N, each in a fresh process, where
    inmemory adds every decoded image. The bound, a quarter of the extra images' decoded bytes, is
    several times the noise of an honest loader's buffers, and far below what holding them costs."""
    small, large = (memory_growth(name, many_files, n) for n in (PROBE_IMAGES, 4 * PROBE_IMAGES))
    assert (small["images"], large["images"]) == (PROBE_IMAGES, 4 * PROBE_IMAGES)
    extra_decoded = large["decoded_bytes"] - small["decoded_bytes"]
    extra = large["growth_bytes"] - small["growth_bytes"]
    grew = [f"+{r['growth_bytes'] / 2**20:.1f} MB over {r['images']}" for r in (small, large)]
    figures = f"{name}: {', '.join(grew)} images"
    print(f"\nMEMORY {figures}; the 3N more decode to {extra_decoded / 2**20:.0f} MB")
    if make_loader(name).streaming:
        assert extra < 0.25 * extra_decoded, figures
    else:
        assert extra > 0.9 * extra_decoded, figures


def test_sequence_batches_in_flight_never_share_memory(many_files: Path) -> None:
    """Through Keras' own enqueuer, with a ring far shorter than the epoch, every batch stays intact."""
    import keras

    from loaderlab.loaders.sequence import PathBatches

    manifest = folder_manifest(str(many_files), val_fraction=0.1)
    spec = ImageSpec(16, 16, 3)
    batches = PathBatches(manifest.val, ImageDecoder(spec), 4, False, 0, workers=2, max_queue_size=1)
    assert len(batches.ring) == 1 + 2 + 2 < len(batches)  # max_queue_size + workers + 2
    slots = [batches.ring.take() for _ in range(len(batches.ring))]
    assert not any(np.shares_memory(a, b) for a, b in itertools.combinations(slots, 2))
    assert all(slot.ctypes.data % 64 == 0 for slot in slots)  # TensorFlow adopts them without a copy
    model = keras.Sequential([keras.Input(spec.shape), keras.layers.Rescaling(1.0)])  # copies to float
    for _ in range(2):  # the second pass starts with batches decoded ahead at the end of the first
        predicted = model.predict(batches, verbose=0)
        expected = np.stack([decode_resize(p, spec) for p in manifest.val.paths])
        assert np.array_equal(predicted.astype(np.uint8), expected)


def test_sequence_decodes_the_next_epoch_ahead_in_its_own_order(manifest) -> None:
    from loaderlab.loaders.sequence import PathBatches

    spec = ImageSpec(8, 8)
    batches = PathBatches(manifest.train, ImageDecoder(spec), 5, shuffle=True, seed=3, workers=2)
    rng = np.random.default_rng(3)
    for epoch in range(3):
        order = rng.permutation(len(manifest.train))  # the same draws as without the look-ahead
        for i in range(len(batches)):
            images, labels = batches[i]
            idx = order[i * 5 : (i + 1) * 5]
            assert np.array_equal(labels, manifest.train.labels[idx]), (epoch, i)
            assert np.array_equal(
                images, np.stack([decode_resize(manifest.train.paths[j], spec) for j in idx])
            )
        assert batches._ahead, "the last batch starts the next epoch's first ones"
        batches.on_epoch_end()


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


def test_sequence_close_stops_the_look_ahead_and_frees_the_ring(manifest) -> None:
    from loaderlab.loaders.sequence import SequenceLoader

    feed = SequenceLoader(workers=2).feed(manifest.train, ImageDecoder(ImageSpec(8, 8)), 5, training=True)
    batches = feed.x
    for i in range(len(batches)):
        batches[i]
    assert batches._ahead and batches._pool is not None  # the next epoch's first batches are on their way
    feed.close()
    assert batches.ring is None and batches._pool is None and not batches._ahead


def test_tfdata_file_cache_is_one_per_split(manifest, tmp_path: Path) -> None:
    """TensorFlow reads a finished cache file without checking what wrote it: a shared prefix must not
    serve the training images as validation ones, nor one dataset's images to another."""
    from loaderlab.loaders.tfdata import TFDataLoader

    loader, decoder = TFDataLoader(cache=str(tmp_path / "cache")), ImageDecoder(ImageSpec(8, 8))
    train_images, _ = collect(loader.feed(manifest.train, decoder, 8, training=True))
    val_images, val_labels = collect(loader.feed(manifest.val, decoder, 8, training=False))
    assert len(train_images) == len(manifest.train) != len(manifest.val) == len(val_images)
    assert np.array_equal(np.sort(val_labels), np.sort(manifest.val.labels))
    fewer = manifest.val.drop({manifest.val.paths[0]})
    assert len(collect(loader.feed(fewer, decoder, 8, training=False))[0]) == len(fewer)
