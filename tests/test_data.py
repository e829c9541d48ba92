"""Manifests: the folder and CSV readers, the stratified split, and synthetic generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import make_folder_dataset, write_image
from loaderlab.data import DatasetError
from loaderlab.data.folder import folder_manifest
from loaderlab.data.manifest import stratified_split
from loaderlab.data.synthetic import COMPLETE_MARKER, generate, synthetic_manifest
from loaderlab.data.table import csv_manifest


def test_folder_reads_classes_in_sorted_order(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "ds", {"cat": 10, "dog": 6, "bird": 4})
    (root / "dog" / "notes.txt").write_text("not an image")
    m = folder_manifest(str(root), val_fraction=0.25, split_seed=1)
    assert m.class_names == ("bird", "cat", "dog")
    assert len(m.train) + len(m.val) == 20
    for split in (m.train, m.val):
        for path, label in zip(split.paths, split.labels, strict=True):
            assert Path(path).parent.name == m.class_names[label]


def test_stratified_split_is_seeded_disjoint_and_per_class() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    paths = [f"f{i}.jpg" for i in range(100)]
    a = stratified_split(paths, labels, ("a", "b", "c"), 0.2, seed=7)
    b = stratified_split(paths, labels, ("a", "b", "c"), 0.2, seed=7)
    c = stratified_split(paths, labels, ("a", "b", "c"), 0.2, seed=8)
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert not set(a.train.paths) & set(a.val.paths)
    assert sorted(a.train.paths + a.val.paths) == sorted(paths)
    assert np.bincount(a.val.labels).tolist() == [10, 6, 4]


def test_split_that_empties_a_class_is_refused() -> None:
    with pytest.raises(DatasetError, match="Class 'b' has 1 image"):
        stratified_split(["x", "y", "z", "w"], [0, 0, 0, 1], ("a", "b"), 0.5, seed=0)


def test_separate_validation_folder(tmp_path: Path) -> None:
    train = make_folder_dataset(tmp_path / "train", {"a": 3, "b": 3})
    val = make_folder_dataset(tmp_path / "val", {"a": 1, "b": 2})
    m = folder_manifest(str(train), val_root=str(val))
    assert (len(m.train), len(m.val)) == (6, 3)
    assert all("/val/" in p for p in m.val.paths)
    other = make_folder_dataset(tmp_path / "other", {"a": 1, "c": 1})
    with pytest.raises(DatasetError, match="same class folders"):
        folder_manifest(str(train), val_root=str(other))


def test_folder_follows_symlinks_and_odd_names(tmp_path: Path) -> None:
    real = make_folder_dataset(tmp_path / "real", {"a": 2, "b": 2})
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    os.symlink(real / "b", root / "b")  # a symlinked class folder
    os.symlink(real / "a" / "000.jpg", root / "a" / "linked.jpg")  # a symlinked file
    write_image(root / "a" / "ünïcødé name")
    m = folder_manifest(str(root), val_fraction=0.5)
    names = {Path(p).name for p in m.train.paths + m.val.paths}
    assert names == {"linked.jpg", "ünïcødé name.jpg", "000.jpg", "001.jpg"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "has no class sub-folders"),
        (lambda r: (r / "a").mkdir(parents=True), "has no images"),
    ],
)
def test_folder_errors_say_what_to_change(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "ds"
    setup(root)
    with pytest.raises(DatasetError, match=message):
        folder_manifest(str(root))


def test_csv_paths_are_relative_to_the_table(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "imgs", {"a": 4, "b": 4})
    rows = [f"imgs/{c}/{i:03d}.jpg,{c}" for c in "ab" for i in range(4)]
    table = tmp_path / "train.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    m = csv_manifest(str(table), val_fraction=0.25)
    assert m.class_names == ("a", "b")
    assert all(Path(p).is_file() for p in m.train.paths + m.val.paths)
    assert np.bincount(m.val.labels).tolist() == [1, 1]


def test_a_spreadsheet_csv_with_bom_crlf_quotes_and_extra_columns(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "imgs", {"a": 4, "b": 4})
    odd = tmp_path / "imgs" / "a" / "cats, sleeping.jpg"  # a comma in the name: quoted in the CSV
    (tmp_path / "imgs" / "a" / "000.jpg").rename(odd)
    rows = ['"imgs/a/cats, sleeping.jpg",a,first one']
    rows += [f"imgs/{c}/{i:03d}.jpg,{c},note {i}" for c in "ab" for i in range(4) if (c, i) != ("a", 0)]
    table = tmp_path / "export.csv"
    table.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(["path,label,notes", *rows, ""]).encode())
    m = csv_manifest(str(table), val_fraction=0.25)
    assert m.class_names == ("a", "b")
    assert str(odd) in m.train.paths + m.val.paths
    assert len(m.train) + len(m.val) == 8 and all(Path(p).is_file() for p in m.train.paths + m.val.paths)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,class\nx.jpg,a\n", "needs the columns"),
        ("path,label\n", "has no rows"),
        ("path,label\nx.jpg,a\ny.jpg,zebra\n", "label 'zebra' is not one of the classes"),
    ],
)
def test_csv_errors_say_what_to_change(tmp_path: Path, content: str, message: str) -> None:
    table = tmp_path / "t.csv"
    table.write_text(content)
    with pytest.raises(DatasetError, match=message):
        csv_manifest(str(table), class_names=["a", "b"] if "zebra" in content else None)


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 16, 24, 4, seed=3, progress=False)
    b = generate(tmp_path / "b", 16, 24, 4, seed=3, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 16
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_interrupted_generation_is_finished_never_used_half_made(tmp_path: Path) -> None:
    root = generate(tmp_path / "ds", 24, 24, 4, seed=0, progress=False)
    reference = {p.relative_to(root): p.read_bytes() for p in root.rglob("*.jpg")}
    # Simulate a crash: no completion marker, a third of the files gone, a stray temp file.
    (root / COMPLETE_MARKER).unlink()
    for p in sorted(root.rglob("*.jpg"))[::3]:
        p.unlink()
    (root / "disk" / ".0000000.jpg.123.tmp").write_bytes(b"half")
    m = synthetic_manifest(str(root), 24, 24, 4, seed=0, progress=False)
    assert json.loads((root / COMPLETE_MARKER).read_text())["num_images"] == 24
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*.jpg")} == reference
    assert len(m.train) + len(m.val) == 24
