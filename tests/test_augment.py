"""Which pixels become the input: data.resize's modes with Keras' meaning, and augment drawn at the
decode from (seed, epoch, index), so every loader crops the same boxes."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_named_loader, photo_like
from loaderlab.data.manifest import make_split
from loaderlab.loaders.augment import Augment, uniforms, window
from loaderlab.loaders.decode import BadImageError, ImageDecoder, ImageSpec, decode_resize

SIZES = [(150, 200), (200, 150), (96, 96), (60, 140), (121, 77), (24, 20)]  # 24x20: smaller than a crop


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """JPEGs of several aspects in two classes, and one PNG and one GIF (Keras' formats)."""
    root = tmp_path_factory.mktemp("aspects")
    paths = []
    for i, size in enumerate(SIZES * 2):
        ext = {0: ".png", 1: ".gif"}.get(i, ".jpg")
        path = root / f"c{i % 2}" / f"{i}{ext}"
        path.parent.mkdir(exist_ok=True)
        image = cv2.GaussianBlur(photo_like(*size, seed=i), (5, 5), 0)  # smooth: a shifted box shows
        assert cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def test_draws_depend_on_seed_epoch_and_index_alone_and_tensorflow_draws_the_same_bits() -> None:
    import tensorflow as tf

    from loaderlab.loaders.tf_decode import tf_uniforms

    indices = np.array([5, 0, 9_999_999, 3])
    draws = uniforms(7, 2, indices)
    assert np.array_equal(draws[[1, 0]], uniforms(7, 2, indices[[1, 0]]))  # order does not matter
    assert np.array_equal(draws, tf_uniforms(7, tf.constant(2), tf.constant(indices)).numpy())
    assert not np.isclose(draws, uniforms(7, 3, indices)).any()  # another epoch, other draws
    assert not np.isclose(draws, uniforms(8, 2, indices)).any()  # another seed
    many = uniforms(0, 0, np.arange(20_000))
    assert many.min() >= 0 and many.max() < 1 and np.allclose(many.mean(axis=0), 0.5, atol=0.01)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_crop_and_pad_mean_what_keras_image_dataset_from_directory_means(photos, mode: str) -> None:
    """Against Keras' own crop_to_aspect_ratio / pad_to_aspect_ratio, on the PNG (no JPEG scaling)."""
    import keras
    import tensorflow as tf

    from loaderlab.loaders.tf_decode import tf_decode_resize

    png = Path(photos[0])
    spec = ImageSpec(36, 28, 3, resize=mode)
    flags = {"crop_to_aspect_ratio": mode == "crop", "pad_to_aspect_ratio": mode == "pad"}
    theirs = keras.utils.load_img(png, target_size=None)
    theirs = keras.ops.convert_to_numpy(
        keras.ops.image.resize(np.asarray(theirs, np.float32), (36, 28), **flags)
    )
    ours = decode_resize(str(png), spec).astype(np.float32)
    assert ours.shape == theirs.shape == (36, 28, 3)
    assert np.abs(ours - np.round(theirs)).max() <= 1  # OpenCV's fixed-point bilinear: one level
    in_graph = tf_decode_resize(tf.constant(str(png)), spec).numpy()
    assert np.abs(in_graph - np.round(theirs)).max() <= 1
    if mode == "pad":  # 150x200 to 36x28: bands of zeros above and below
        assert ours[0].max() == 0 and ours[-1].max() == 0 and ours[18].min() > 0


def test_windows_never_leave_the_image_and_eval_crop_takes_the_centre() -> None:
    augment = Augment("rrc", scale=(0.08, 1.0))
    spec = ImageSpec(32, 32)
    for (height, width), u in zip(itertools.cycle(SIZES), uniforms(1, 0, np.arange(600)), strict=False):
        y, x, h, w = window((height, width), spec, augment, u)
        assert y >= 0 and x >= 0 and h >= 1 and w >= 1 and y + h <= height and x + w <= width
    assert window((100, 200), ImageSpec(32, 32, resize="crop")) == (0, 50, 100, 100)
    assert window((100, 200), ImageSpec(32, 32, resize="crop", eval_crop=0.5)) == (25, 75, 50, 50)


def epochs_of(feed, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` training epochs of a feed as (images, labels), whatever its kind."""
    found = []
    if hasattr(feed.x, "on_epoch_end"):  # a PyDataset: what Keras does between epochs
        for _ in range(count):
            batches = [tuple(np.array(part) for part in feed.x[i]) for i in range(len(feed.x))]
            feed.x.on_epoch_end()
            found.append(batches)
    else:
        stream = iter(feed.x)
        for _ in range(count):
            found.append(
                [tuple(np.asarray(part) for part in b) for b in itertools.islice(stream, feed.steps)]
            )
    return [tuple(np.concatenate(parts) for parts in zip(*batches, strict=True)) for batches in found]


@pytest.mark.parametrize("name", ["generator", "sequence", "tfdata", "tfdata-tf", "packed"])
def test_every_loader_crops_the_same_boxes_each_epoch(photos, tmp_path: Path, name: str) -> None:
    """Each image a loader yields is the rrc crop drawn for (seed, epoch, its index), and no other."""
    labels = [i % 2 for i in range(len(photos))]
    split = make_split(photos, labels)
    spec, augment = ImageSpec(32, 32), Augment("rrc", seed=3)
    loader = make_named_loader(
        name.partition("-")[0], tmp_path, **({"decode": "tf"} if "-tf" in name else {})
    )
    feed = loader.feed(split, ImageDecoder(spec, augment=augment), 5, training=True, seed=1)
    for epoch, (images, got_labels) in enumerate(epochs_of(feed, 2)):
        draws = augment.draws(epoch, np.arange(len(photos)))
        expected = np.stack(
            [decode_resize(p, spec, augment=augment, u=u) for p, u in zip(photos, draws, strict=True)]
        )
        # Each yielded image against every expected one: the nearest must be its own, and all differ.
        distance = np.abs(images[:, None].astype(int) - expected[None].astype(int)).mean(axis=(2, 3, 4))
        nearest = distance.argmin(axis=1)
        assert sorted(nearest) == list(range(len(photos))), (epoch, nearest)
        assert np.array_equal(got_labels, np.asarray(labels)[nearest])
        own = distance[np.arange(len(photos)), nearest]
        if name in ("generator", "sequence", "tfdata"):  # the shared OpenCV decoder: the same pixels
            assert own.max() == 0
        else:  # a JPEG's window alone (tf), or crops of a pack stored at 36 px and re-encoded
            assert own.mean() <= (1.5 if name == "tfdata-tf" else 8), own
    feed.close()


@pytest.mark.parametrize("resize, eval_crop", [("crop", None), ("pad", None), ("squash", 0.875)])
def test_every_loader_fits_the_aspect_alike(photos, tmp_path: Path, resize: str, eval_crop) -> None:
    """Validation under each resize mode (and eval_crop): the loaders agree with the shared decoder."""
    split = make_split(photos, [i % 2 for i in range(len(photos))])
    spec = ImageSpec(36, 28, 3, resize=resize, eval_crop=eval_crop)
    reference = np.stack([decode_resize(p, spec) for p in photos])
    for name in ["inmemory", "generator", "sequence", "tfdata", "tfdata-tf", "packed"]:
        kwargs = {"deterministic": True, "decode": "tf"} if name == "tfdata-tf" else {}
        if name == "tfdata":
            kwargs = {"deterministic": True}
        loader = make_named_loader(name.partition("-")[0], tmp_path, **kwargs)
        feed = loader.feed(split, ImageDecoder(spec, augment=Augment("rrc")), 4, training=False)
        ((images, _),) = epochs_of(feed, 1) if feed.steps else [_one_pass(feed)]
        diff = np.abs(images.astype(int) - reference.astype(int))
        if name == "packed":  # stored at 36 px on the shorter side, re-encoded, resized at read time
            assert diff.mean() <= 6, (name, diff.mean())
        elif name == "tfdata-tf":  # a JPEG's window alone: chroma at its edge differs by a few levels
            assert diff.mean() <= 1, (name, diff.mean())
        else:  # validation never augments, whatever the decoder's augment
            assert diff.max() == 0, name
        feed.close()


def _one_pass(feed) -> tuple[np.ndarray, np.ndarray]:
    from helpers import collect

    return collect(feed)


def test_a_crop_of_a_bad_file_follows_the_policy(photos, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    data = Path(photos[3]).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    augment = Augment("rrc")
    paths = [photos[3], str(truncated), str(tmp_path / "missing.jpg")]
    with pytest.raises(BadImageError, match="truncated.jpg"):
        ImageDecoder(ImageSpec(32, 32), "error", augment=augment).batch(
            paths[:2], np.zeros(2), indices=[0, 1]
        )
    skipping = ImageDecoder(ImageSpec(32, 32), "skip", augment=augment)
    images, labels = skipping.batch(paths, np.arange(3), indices=np.arange(3), epoch=4)
    assert images.shape == (1, 32, 32, 3) and labels.tolist() == [0]
    assert [Path(p).name for p, _ in skipping.skipped] == ["truncated.jpg", "missing.jpg"]


def test_a_small_image_is_upscaled_into_its_crop(photos) -> None:
    small = photos[5]  # 24x20
    u = uniforms(0, 0, np.arange(1))[0]
    image = decode_resize(small, ImageSpec(64, 64), augment=Augment("rrc"), u=u)
    assert image.shape == (64, 64, 3) and image.std() > 1
