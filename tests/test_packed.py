"""The packed loader: a pack is written once, keyed by its sources, never half-read, class-mixed, and
its pixels are the spec's up to one JPEG re-encode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_folder_dataset, photo_like
from loaderlab.data.folder import folder_manifest, scan_class_folders
from loaderlab.data.manifest import make_split
from loaderlab.data.pack import META, PROGRESS
from loaderlab.data.pack_cache import stored_images
from loaderlab.loaders import BadImageError, ImageDecoder, ImageSpec, decode_resize
from loaderlab.loaders.decode import decode_bytes
from loaderlab.loaders.packed import PackedLoader
from loaderlab.training.evaluate import _batches as evaluate_batches

# Measured by the test below: 38.9 dB (12 photo-like 1200x900 JPEGs to 224 px, quality 90 at 4:4:4).
PSNR_FLOOR_DB = 38.0


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def images_and_labels(ds) -> tuple[np.ndarray, np.ndarray]:
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_a_pack_is_reused_until_a_source_split_or_size_changes(tmp_path: Path, tiny_root: Path) -> None:
    manifest = folder_manifest(str(tiny_root), val_fraction=0.25)
    source = snapshot(tiny_root)
    loader, decoder = (
        PackedLoader(root=str(tmp_path / "packed"), progress=False),
        ImageDecoder(ImageSpec(16, 16)),
    )
    first = loader.pack(manifest.train, decoder, training=True)
    assert not first.reused and first.records == len(manifest.train) and first.seconds > 0
    again = loader.pack(manifest.train, decoder, training=True)
    assert again.reused and again.folder == first.folder and again.seconds == 0
    from_yaml = PackedLoader(root=str(tmp_path / "packed"), shard_mb=100, progress=False)  # YAML gives an int
    assert from_yaml.pack(manifest.train, decoder, training=True).reused
    assert loader.pack(manifest.val, decoder, training=False).folder != first.folder  # another split
    bigger = loader.pack(manifest.train, ImageDecoder(ImageSpec(24, 24)), training=True)
    assert bigger.folder != first.folder and not bigger.reused  # a larger side than any pack there
    assert bigger.meta["stored_sizes"] == [[24, 24]]
    # A pack at a side at least the one wanted serves it (the smallest such), resized at read time.
    smaller = loader.pack(manifest.train, ImageDecoder(ImageSpec(20, 20)), training=True)
    assert smaller.reused and smaller.folder == bigger.folder
    assert loader.pack(manifest.train, ImageDecoder(ImageSpec(12, 12)), training=True).folder == first.folder
    assert snapshot(tiny_root) == source  # nothing written to the user's folder

    copy = make_folder_dataset(tmp_path / "copy", {"a": 4, "b": 4})
    split = folder_manifest(str(copy), val_fraction=0.25).train
    before = loader.pack(split, decoder, training=True)
    changed = Path(split.paths[0])
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert loader.pack(split, decoder, training=True).folder != before.folder  # a changed file


def test_an_interrupted_pack_resumes_from_its_last_finished_shard(
    tmp_path: Path, tiny_root: Path, monkeypatch
) -> None:
    from loaderlab.data import pack as pack_module

    split = folder_manifest(str(tiny_root), val_fraction=0.25).train
    decoder = ImageDecoder(ImageSpec(16, 16))
    shard_mb = 3000 / 2**20  # a few records per shard
    loader = PackedLoader(root=str(tmp_path / "a"), shard_mb=shard_mb, progress=False)
    real, written = pack_module._example, []

    def interrupted(*args):
        if len(written) == len(split) // 2:
            raise KeyboardInterrupt
        written.append(1)
        return real(*args)

    monkeypatch.setattr(pack_module, "_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loader.pack(split, decoder, training=True)
    folders = [p for p in (tmp_path / "a").iterdir() if p.name != ".locks"]
    assert len(folders) == 1 and not (folders[0] / META).exists()  # never read half-written
    progress = json.loads((folders[0] / PROGRESS).read_text())
    finished = sum(shard["records"] for shard in progress["shards"])
    assert len(progress["shards"]) >= 2 and 0 < finished <= len(split) // 2
    assert not list(folders[0].glob("*.partial"))  # the open shard was dropped

    monkeypatch.setattr(pack_module, "_example", lambda *a: written.append(1) or real(*a))
    written.clear()
    pack = loader.pack(split, decoder, training=True)
    assert not pack.reused and pack.records == len(split) and (folders[0] / META).exists()
    assert len(written) == len(split) - finished  # only what no finished shard held
    whole = PackedLoader(root=str(tmp_path / "b"), shard_mb=shard_mb, progress=False)
    assert stored_images(pack) == stored_images(whole.pack(split, decoder, training=True))


def test_batches_mix_the_classes_of_a_class_sorted_source(tmp_path: Path) -> None:
    """4 classes, the source sorted by class: every batch of 64 of the first epoch holds >= 3 classes."""
    root = make_folder_dataset(tmp_path / "sorted", {c: 128 for c in "abcd"})
    paths, labels, _ = scan_class_folders(root)
    split = make_split(paths, labels)
    assert list(split.labels) == sorted(split.labels)  # really sorted by class
    loader = PackedLoader(root=str(tmp_path / "packed"), shard_mb=0.002, progress=False)  # several shards
    ds = loader.dataset(split, ImageDecoder(ImageSpec(8, 8)), batch_size=64, training=True, seed=0)
    assert len(loader.pack(split, ImageDecoder(ImageSpec(8, 8)), training=True).shards) > 1
    classes = [len(np.unique(labels.numpy())) for _, labels in ds]
    print(f"\nCLASS-MIX classes per batch of 64: min {min(classes)}, all {classes}")
    assert len(classes) == len(split) // 64 and min(classes) >= 3


def test_the_training_feed_is_one_stream_of_whole_epochs(tmp_path: Path) -> None:
    """fit keeps one iterator over the training feed: each `steps` batches hold every record once,
    in a new order each epoch, the last batch of an epoch never mixed with the next."""
    root = make_folder_dataset(tmp_path / "ds", {c: 11 for c in "abc"})  # 33 images: 4 batches of 8 + 1
    paths, labels, _ = scan_class_folders(root)
    split = make_split(paths, labels)
    loader = PackedLoader(root=str(tmp_path / "packed"), shard_mb=0.002, progress=False)  # several shards
    with loader.feed(split, ImageDecoder(ImageSpec(8, 8)), 8, training=True, seed=0) as feed:
        assert feed.steps == 5 and feed.fit_kwargs()["steps_per_epoch"] == 5
        stream = iter(feed.x)
        epochs = [[next(stream)[1].numpy() for _ in range(feed.steps)] for _ in range(3)]
    for batches in epochs:
        assert [len(b) for b in batches] == [8, 8, 8, 8, 1]
        assert sorted(np.concatenate(batches)) == sorted(split.labels)
    orders = {tuple(np.concatenate(batches)) for batches in epochs}
    assert len(orders) == 3
    with loader.feed(split, ImageDecoder(ImageSpec(8, 8)), 8, training=True, seed=0) as feed:
        labels = np.concatenate([y for _, y in evaluate_batches(feed)])  # one pass, as evaluation reads
    assert sorted(labels) == sorted(split.labels)


def test_a_pack_keeps_the_aspect_at_its_side_and_rrc_crops_its_real_pixels(tmp_path: Path) -> None:
    from loaderlab.loaders.augment import Augment

    paths = []
    for i, size in enumerate([(90, 120), (120, 90), (30, 40)]):  # 30x40: smaller than the side, kept
        path = tmp_path / "photos" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), photo_like(*size, seed=i))
        paths.append(str(path))
    split = make_split(paths, [0, 1, 0])
    decoder = ImageDecoder(ImageSpec(32, 32), augment=Augment("rrc"))
    loader = PackedLoader(root=str(tmp_path / "packed"), progress=False)
    pack = loader.pack(split, decoder, training=True)
    assert loader.side(decoder, training=True) == 36  # the input's side x RRC_SIDE
    stored = sorted(
        cv2.imdecode(np.frombuffer(r, np.uint8), cv2.IMREAD_COLOR).shape[:2] for r in stored_images(pack)
    )
    assert stored == [(30, 40), (36, 48), (48, 36)]
    assert sorted(pack.meta["stored_sizes"]) == [[30, 40], [36, 48], [48, 36]]
    # Crops drawn per epoch, read from the pack: two epochs differ.
    feed = loader.feed(split, decoder, 3, training=True, seed=0)
    stream = iter(feed.x)
    first, second = (next(stream)[0].numpy() for _ in range(2))
    feed.close()
    assert first.shape == (3, 32, 32, 3) and not np.array_equal(
        np.sort(first, axis=0), np.sort(second, axis=0)
    )


def test_packed_pixels_are_the_specs_up_to_one_re_encode(tmp_path: Path) -> None:
    paths = []
    for i in range(12):
        path = tmp_path / "photos" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), photo_like(900, 1200, seed=i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    split, spec = make_split(paths, [i % 2 for i in range(12)]), ImageSpec(224, 224, 3)
    loader = PackedLoader(root=str(tmp_path / "packed"), progress=False)  # the default encoding
    images, labels = images_and_labels(loader.dataset(split, ImageDecoder(spec), 4, training=False))
    reference = np.stack([decode_resize(p, spec) for p in paths])
    assert images.shape == reference.shape and images.dtype == np.uint8
    assert np.array_equal(labels, split.labels)  # validation keeps the manifest's order
    db = psnr(images, reference)
    print(f"\nPSNR packed vs spec path: {db:.1f} dB (floor {PSNR_FLOOR_DB})")
    assert db >= PSNR_FLOOR_DB
    # Stored with the aspect kept (224x299), records decode and resize in TensorFlow's graph: the shared
    # decoder's pixels up to the bilinear resize's rounding (tf_decode).
    pack = loader.pack(split, ImageDecoder(spec), False)
    assert pack.meta["stored_sizes"] == [[224, 299]]
    stored = [decode_bytes(r, spec) for r in stored_images(pack)]
    assert np.abs(images.astype(int) - np.stack(stored)).max() <= 1


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_bad_files_follow_the_policy_at_pack_time(tmp_path: Path, policy: str) -> None:
    root = make_folder_dataset(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "a" / "002.jpg").write_bytes(b"")
    split = make_split(*scan_class_folders(root)[:2])
    loader, decoder = (
        PackedLoader(root=str(tmp_path / "packed"), progress=False),
        ImageDecoder(ImageSpec(8, 8), policy),
    )
    if policy == "error":
        with pytest.raises(BadImageError, match="002.jpg'.*file is empty"):
            loader.pack(split, decoder, training=True)
        return
    pack = loader.pack(split, decoder, training=True)
    assert pack.records == len(split) - 1 and [p for p, _ in decoder.skipped] == [str(root / "a" / "002.jpg")]
    decoder_again = ImageDecoder(ImageSpec(8, 8), policy)
    assert loader.pack(split, decoder_again, training=True).reused and len(decoder_again.skipped) == 1
    with pytest.raises(BadImageError, match="002.jpg'.*file is empty"):  # skipped there, not here
        loader.pack(split, ImageDecoder(ImageSpec(8, 8), "error"), training=True)


@pytest.mark.parametrize("shard_mb", [100, 3000 / 2**20], ids=["one-shard", "many-shards"])
def test_under_multiworker_workers_share_one_pack_and_read_disjoint_parts(
    tmp_path: Path, tiny_root: Path, shard_mb: float
) -> None:
    """strategy=multiworker: one pack of the split for every worker; together they read each file once."""
    split = folder_manifest(str(tiny_root), val_fraction=0.25).train
    loader, decoder = (
        PackedLoader(root=str(tmp_path), shard_mb=shard_mb, progress=False),
        ImageDecoder(ImageSpec(16, 16)),
    )
    labels, counts = [], []
    for index in range(2):
        ds, records = loader.worker_dataset(split, decoder, 4, True, 0, index, 2)
        labels.append(images_and_labels(ds)[1])
        counts.append(records)
        assert len(labels[-1]) == records
    packs = [p for p in tmp_path.iterdir() if (p / META).exists()]
    assert len(packs) == 1  # shared, not one per worker
    assert sum(counts) == len(split) and abs(counts[0] - counts[1]) <= max(1, len(split) // 4)
    assert sorted(np.concatenate(labels).tolist()) == sorted(split.labels.tolist())
