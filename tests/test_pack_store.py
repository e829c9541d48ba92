"""Packs in a bucket (moto's S3 server on 127.0.0.1), packs written once by one of several jobs,
retried store faults, and a pack's life: `packs.py list`, `verify` and `clean`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
pytest.importorskip("moto", reason="moto[server] is in the dev extra")

import packs  # noqa: E402
from loaderlab.data import pack as pack_module  # noqa: E402
from loaderlab.data import pack_cache, pack_root  # noqa: E402
from loaderlab.data.folder import folder_manifest  # noqa: E402
from loaderlab.data.pack import META, PackError  # noqa: E402
from loaderlab.data.pack_root import PackRoot  # noqa: E402
from loaderlab.loaders import ImageDecoder, ImageSpec  # noqa: E402
from loaderlab.loaders.packed import PackedLoader  # noqa: E402
from test_loaders import collect  # noqa: E402
from test_object_store import BUCKET, storage  # noqa: E402
from test_object_store import s3 as s3  # noqa: E402, F401  the server fixture

SPEC = ImageSpec(16, 16)
SHARD_MB = 4000 / 2**20  # a few records per shard: several shards from the tiny set


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """This machine's pack cache, empty, under tmp_path."""
    folder = tmp_path / "cache"
    monkeypatch.setattr(pack_root, "PACK_CACHE", folder)
    return folder


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """One entry per record encoded into a pack, from any thread."""
    real, lock, calls = pack_module._example, threading.Lock(), []

    def example(*args):
        with lock:
            calls.append(1)
        return real(*args)

    monkeypatch.setattr(pack_module, "_example", example)
    return calls


def images(loader: PackedLoader, split, decoder: ImageDecoder) -> tuple[np.ndarray, np.ndarray]:
    with loader.feed(split, decoder, 8, training=False) as feed:
        return collect(feed)


def test_a_pack_in_a_bucket_is_written_once_and_read_whole_shards_elsewhere(
    s3, tiny_root: Path, tmp_path: Path, cache: Path, monkeypatch, counted
) -> None:
    monkeypatch.chdir(tmp_path)
    split = folder_manifest(str(tiny_root), val_fraction=0.25).val
    decoder = ImageDecoder(SPEC, storage=storage(s3))
    root = f"s3://{BUCKET}/packs-a"
    s3.reset_counts()
    written = PackedLoader(root=root, shard_mb=SHARD_MB, progress=False).pack(split, decoder, training=False)
    assert not written.reused and len(written.shards) >= 3 and len(counted) == len(split)
    assert not (tmp_path / "s3:").exists()  # the URL is not taken for a local folder
    ours = [key for key in s3.puts if f"/{written.fingerprint}/" in key]
    assert ours[-1].endswith(f"/{META}")  # pack.json last: a half-written pack is never read
    assert [k.rsplit("/", 1)[1] for k in ours if k.endswith(".tfrecord")] == [
        Path(s).name for s in written.shards
    ]
    local = PackedLoader(root=str(tmp_path / "local"), shard_mb=SHARD_MB, progress=False)
    expected = images(local, split, ImageDecoder(SPEC))

    for cache_gb in (20, 0):  # another machine: its cache empty; then a cache too small, streamed
        pack_cache.drop_cached(root, written.fingerprint)
        counted.clear()
        s3.reset_counts()
        elsewhere = PackedLoader(root=root, shard_mb=SHARD_MB, cache_gb=cache_gb, progress=False)
        got = images(elsewhere, split, decoder)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        assert not counted and not any(k.endswith(".tfrecord") for k in s3.puts)  # reused, not rewritten
        shard_gets = {k: n for k, n in s3.gets.items() if k.endswith(".tfrecord")}
        print(f"\nSTORE-READ cache_gb={cache_gb}: {len(written.shards)} shards, GETs {shard_gets}")
        assert len(shard_gets) == len(written.shards) and max(shard_gets.values()) <= 2  # not one per image
        assert pack_cache.cache_folder(root, written.fingerprint).is_dir() == (cache_gb > 0)

    assert packs.main(["list", "--root", root, "--option", f"endpoint_url={s3.endpoint_url}"]) == 0
    assert packs.main(["verify", "--root", root, "--option", f"endpoint_url={s3.endpoint_url}"]) == 0


def test_two_jobs_needing_one_pack_write_it_once(s3, tiny_root: Path, tmp_path: Path, cache, counted) -> None:
    split = folder_manifest(str(tiny_root), val_fraction=0.25).train
    for root in (f"s3://{BUCKET}/packs-b", str(tmp_path / "local")):  # a claim object; a file lock
        counted.clear()
        results: list = []

        def job(root: str = root, results: list = results) -> None:
            loader = PackedLoader(root=root, shard_mb=SHARD_MB, progress=False)
            results.append(loader.pack(split, ImageDecoder(SPEC, storage=storage(s3)), training=True))

        jobs = [threading.Thread(target=job) for _ in range(2)]
        for t in jobs:
            t.start()
        for t in jobs:
            t.join(timeout=300)
        assert len(results) == 2 and results[0].folder == results[1].folder, root
        assert sorted(r.reused for r in results) == [False, True], root
        assert len(counted) == len(split), root  # one job wrote, the other waited and reused it


def test_a_throttled_store_is_retried_while_packing_and_reading(s3, tiny_root: Path, cache) -> None:
    split = folder_manifest(str(tiny_root), val_fraction=0.25).val
    decoder = ImageDecoder(SPEC, storage=storage(s3))
    loader = PackedLoader(root=f"s3://{BUCKET}/packs-c", shard_mb=SHARD_MB, progress=False)
    s3.fail_next(2)  # 503 SlowDown, as S3 answers a burst
    loader.pack(split, decoder, training=False)
    s3.fail_next(2, status=500, code="InternalError")
    got = images(loader, split, decoder)
    assert len(got[1]) == len(split) and not s3.failures  # every injected failure was met and retried


def test_a_streamed_shard_gives_its_records_whatever_the_read_size(s3, tmp_path: Path, monkeypatch) -> None:
    """Every record back, an empty one and one longer than a read among them; a shard cut short is
    refused, naming verify."""
    import tensorflow as tf

    records = [b"a" * 10, b"", np.random.default_rng(0).bytes(5000), b"b" * 17]
    local = tmp_path / "00000.tfrecord"
    with tf.io.TFRecordWriter(str(local)) as writer:
        for record in records:
            writer.write(record)
    place = PackRoot(f"s3://{BUCKET}/stream", storage(s3))
    data = local.read_bytes()
    place.fs.pipe_file(place.path("whole.tfrecord"), data)
    place.fs.pipe_file(place.path("torn.tfrecord"), data[:-3])
    for block in (7, 4096, pack_cache.STREAM_BLOCK):
        monkeypatch.setattr(pack_cache, "STREAM_BLOCK", block)
        assert list(pack_cache.stream_records(place, place.path("whole.tfrecord"))) == records, block
    with pytest.raises(PackError, match=r"ends inside a record.*python src/packs.py verify"):
        list(pack_cache.stream_records(place, place.path("torn.tfrecord")))


def test_a_pack_with_a_missing_or_damaged_shard_is_refused_naming_verify(
    tiny_root: Path, tmp_path: Path
) -> None:
    split = folder_manifest(str(tiny_root), val_fraction=0.25).val
    loader = PackedLoader(root=str(tmp_path), shard_mb=SHARD_MB, progress=False)
    pack = loader.pack(split, ImageDecoder(SPEC), training=False)
    Path(pack.shards[1]).unlink()
    with pytest.raises(PackError, match=r"shard 00001.tfrecord is missing.*python src/packs.py verify"):
        loader.pack(split, ImageDecoder(SPEC), training=False)


def test_packs_cli_lists_verifies_and_cleans_all_but_a_held_pack(
    tiny_root: Path, tmp_path: Path, capsys
) -> None:
    manifest = folder_manifest(str(tiny_root), val_fraction=0.25)
    root = tmp_path / "packs"
    loader = PackedLoader(root=str(root), shard_mb=SHARD_MB, progress=False)
    idle = loader.pack(manifest.val, ImageDecoder(SPEC), training=False)
    (root / f".{idle.fingerprint}.tmp-1a2b3c4d").mkdir()  # a leftover of the first pack format
    assert packs.main(["list", "--root", str(root)]) == 0
    listed = capsys.readouterr().out
    assert idle.fingerprint in listed and str(tiny_root) in listed and "leftover" in listed

    shard = Path(idle.shards[0])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum tells
    shard.write_bytes(bytes(data))
    assert packs.main(["verify", "--root", str(root)]) == 1
    assert "00000.tfrecord does not match its checksum" in capsys.readouterr().out

    with loader.feed(manifest.train, ImageDecoder(SPEC), 8, training=True) as feed:  # a running job
        assert packs.main(["list", "--root", str(root)]) == 0
        assert "yes" in capsys.readouterr().out
        assert packs.main(["clean", "--root", str(root), "--unused-days", "0"]) == 0
        out = capsys.readouterr().out
        held = feed.tags["pack_train"]
        assert f"deleted {idle.fingerprint}" in out and f"kept    {Path(held).name}" in out and "Freed" in out
        assert not Path(idle.folder).exists() and (Path(held) / META).exists()
        assert not list(root.glob(".*.tmp-*"))
    assert packs.main(["clean", "--root", str(root), "--all"]) == 0  # released when the feed closed
    assert not (Path(held)).exists()
