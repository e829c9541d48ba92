"""The peers: loader=keras as a training loader, and the benchmark's peer entries on small data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import collect, make_mixed_dataset, tree
from loaderlab.benchmark import DECODE_LIMIT, BenchmarkConfig, run_benchmark
from loaderlab.benchmark.peers import DALI_CPU, GRAIN, KERAS_GRAIN, PEERS
from loaderlab.data.folder import folder_manifest
from loaderlab.data.manifest import Split
from loaderlab.loaders import ImageDecoder, ImageSpec, decode_resize
from loaderlab.loaders.augment import Augment
from loaderlab.loaders.keras import KerasLoader

pytest.importorskip("grain", reason='the peers extra: pip install -e ".[peers]"')
pytest.importorskip("nvidia.dali", reason='the peers extra: pip install -e ".[peers]"')


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    """Baseline and progressive JPEGs, grey ones and PNGs, of several aspects."""
    root = make_mixed_dataset(tmp_path_factory.mktemp("mixed") / "ds")
    return root, folder_manifest(str(root), val_fraction=0.5)


@pytest.mark.parametrize("fmt", ["tf", "grain"])
@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_keras_loader_yields_uint8_at_the_spec_with_our_labels(mixed, tmp_path: Path, fmt, resize) -> None:
    """Keras decodes whole images with TF ops (no libjpeg scaling), so it is compared with the spec's
    full-scale decode: within a few grey levels on average, the same labels in the same order."""
    root, manifest = mixed
    before = tree(root)
    spec = ImageSpec(36, 28, 3, scaled_decode=False, resize=resize)
    loader = KerasLoader(fmt, str(tmp_path / "links"))
    if (fmt, resize) == ("tf", "pad"):  # tf.image.resize_with_pad: another band than the spec's
        with pytest.raises(ValueError, match="loader.format=grain"):
            loader.feed(manifest.val, ImageDecoder(spec), 7, training=False)
        return
    images, labels = collect(loader.feed(manifest.val, ImageDecoder(spec), 7, training=False))
    expected = np.stack([decode_resize(p, spec) for p in manifest.val.paths]).astype(int)
    assert images.dtype == np.uint8 and images.shape == expected.shape
    assert np.array_equal(labels, manifest.val.labels)
    assert np.abs(images.astype(int) - expected).mean() <= 1.5
    assert tree(root) == before  # the user's files only read; the links are ours, under outputs


def test_keras_loader_links_each_split_once_and_shuffles_training_batches(mixed, tmp_path: Path) -> None:
    _, manifest = mixed
    loader = KerasLoader("tf", str(tmp_path / "links"))
    decoder = ImageDecoder(ImageSpec(16, 16))
    feed = loader.feed(manifest.train, decoder, 4, training=True, seed=3)
    [folder] = (tmp_path / "links").iterdir()
    assert sorted(Path(p).resolve() for p in folder.iterdir()) == sorted(
        Path(p).resolve() for p in manifest.train.paths
    )
    loader.feed(manifest.train, decoder, 4, training=True, seed=3)
    assert len(list((tmp_path / "links").iterdir())) == 1  # reused, not made again
    first, second = collect(feed)[1], collect(feed)[1]
    assert sorted(first) == sorted(second) == sorted(manifest.train.labels)
    assert not np.array_equal(first, second)  # reshuffled each epoch


def test_keras_loader_refuses_what_keras_cannot_do(mixed, tmp_path: Path) -> None:
    _, manifest = mixed
    loader = KerasLoader("tf", str(tmp_path / "links"))
    with pytest.raises(ValueError, match="augment=layers.*Received: augment=rrc"):
        loader.feed(manifest.train, ImageDecoder(ImageSpec(16, 16), augment=Augment("rrc")), 4, training=True)
    with pytest.raises(ValueError, match="data.eval_crop=null.*Received: data.eval_crop=0.875"):
        loader.feed(manifest.val, ImageDecoder(ImageSpec(16, 16, eval_crop=0.875)), 4, training=False)
    bucket = Split(("s3://bucket/a/1.jpg",), np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="loader=tfdata"):
        loader.feed(bucket, ImageDecoder(ImageSpec(16, 16)), 4, training=False)
    with pytest.raises(ValueError, match="Received: format='torch'"):
        KerasLoader("torch")


def config(tmp_path: Path, tracking_uri: str, root: Path, entries: list[str], **kw) -> BenchmarkConfig:
    return BenchmarkConfig(
        input_size=32, batch_size=16, passes=1, rounds=1, root=str(root), entries=entries,
        tracking_uri=tracking_uri, artifact_location=str(tmp_path / "artifacts"),
        out=str(tmp_path / "results.json"), progress=False, child_timeout_s=300, **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_every_peer_is_timed_and_compared_with_the_spec(tmp_path: Path, tracking_uri: str, tiny_root) -> None:
    """Each peer in its own process, through model.fit's data path, its first images' PSNR to the
    spec's decode of the same files; a peer that cannot do what is asked is skipped with its reason."""
    skipped = f"{KERAS_GRAIN} augment=rrc"  # Keras has no crop decode: a real refusal, in the child
    entries = [DECODE_LIMIT, *PEERS, f"{GRAIN} peer.workers=0 peer.threads=2", skipped]
    report = run_benchmark(config(tmp_path, tracking_uri, tiny_root, entries))
    by_entry = {r.entry: r for r in report.results}
    assert set(by_entry) == {DECODE_LIMIT, *PEERS, f"{GRAIN} peer.workers=0 peer.threads=2"}
    assert not report.failures
    for name in PEERS:
        result = by_entry[name]
        assert result.images_per_pass == 96 and result.images_per_sec > 0
        assert result.params["batch_path"] == "keras_TFEpochIterator"
        assert result.params["output"].endswith("32x32x3")
        assert result.extra_metrics["psnr_db"] > 25, name  # the same images, resized one way or another
        assert f"{name}: yields" in report.table
    in_process = by_entry[f"{GRAIN} peer.workers=0 peer.threads=2"].params
    assert in_process["grain_workers"] == 0 and in_process["grain_threads"] == 2
    assert skipped in report.skipped and "dali_cpu alone crops" in report.skipped[skipped]
    assert f"{skipped}: skipped" in report.table


@pytest.mark.slow
def test_a_bad_jpeg_fails_or_is_counted_per_peer_and_never_stops_the_benchmark(
    tmp_path: Path, tracking_uri: str, tiny_root: Path
) -> None:
    root = tmp_path / "with_bad"
    shutil.copytree(tiny_root, root)
    (next(root.glob("*/*.jpg"))).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = run_benchmark(config(tmp_path, tracking_uri, root, [DECODE_LIMIT, DALI_CPU, GRAIN, "generator"]))
    assert set(report.failures) == {DALI_CPU, GRAIN}  # both raise on the file: each recorded FAILED
    counted = {r.entry: r.images_per_pass for r in report.results}
    assert counted == {DECODE_LIMIT: 96, "generator": 95}  # the limit tries every file; the loader skips one
