"""Bad input and faults: every odd file decodes or is named; runs end with a status and lose nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from helpers import make_folder_dataset, write_image
from loaderlab import validate
from loaderlab.data.folder import folder_manifest
from loaderlab.data.table import csv_manifest
from loaderlab.loaders import BadImageError, ImageDecoder, ImageSpec, decode_resize
from loaderlab.training import callbacks as callbacks_module
from loaderlab.training.run import train
from loaderlab.utils.errors import ConfigError
from loaderlab.validate import drop_bad_images, find_bad_images, inspect_file
from test_loaders import LOADER_NAMES, collect, make_loader
from test_train import latest_run

SPEC_RGB, SPEC_GREY = ImageSpec(16, 24, 3), ImageSpec(16, 24, 1)


def _cv2(path: Path, array: np.ndarray) -> None:
    assert cv2.imwrite(str(path), array)


# name -> (writer, RGB expected at the centre)
ODD_IMAGES = {
    "alpha.png": (
        lambda p: _cv2(
            p, np.dstack([np.full((20, 30, 3), (60, 30, 200), np.uint8), np.full((20, 30), 128, np.uint8)])
        ),
        (200, 30, 60),
    ),
    "grey.jpg": (lambda p: _cv2(p, np.full((20, 30), 100, np.uint8)), (100, 100, 100)),
    "cmyk.jpg": (lambda p: Image.new("RGB", (30, 20), (200, 30, 60)).convert("CMYK").save(p), (200, 30, 60)),
    "deep16.png": (lambda p: _cv2(p, np.full((20, 30, 3), 50000, np.uint16)), (195, 195, 195)),
    "one_pixel.jpg": (lambda p: _cv2(p, np.full((1, 1, 3), 77, np.uint8)), (77, 77, 77)),
    "huge_6000x4000.jpg": (lambda p: _cv2(p, np.full((4000, 6000, 3), 120, np.uint8)), (120, 120, 120)),
    "thin_5x1000.png": (lambda p: _cv2(p, np.full((5, 1000, 3), 33, np.uint8)), (33, 33, 33)),
    "bitmap.bmp": (lambda p: _cv2(p, np.full((20, 30, 3), (60, 30, 200), np.uint8)), (200, 30, 60)),
}


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_but_valid_images_decode_to_the_spec(tmp_path: Path, name: str) -> None:
    writer, rgb = ODD_IMAGES[name]
    path = tmp_path / name
    writer(path)
    assert inspect_file(str(path)) is None
    image = decode_resize(str(path), SPEC_RGB)
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    assert np.abs(image[8, 12].astype(int) - rgb).max() <= 3
    grey = decode_resize(str(path), SPEC_GREY)
    expected = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert grey.shape == (16, 24, 1) and abs(int(grey[8, 12, 0]) - expected) <= 3


def make_bad_files(folder: Path) -> dict[str, str]:
    """One file of each bad kind; returns {path: the reason the check must give}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_image(folder / "good").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    png = write_image(folder / "png_source", ext=".png").read_bytes()
    (folder / "png_source.png").unlink()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "good.jpg").unlink()
    return {
        str(folder / "truncated.jpg"): "truncated JPEG",
        str(folder / "empty.jpg"): "file is empty",
        str(folder / "text.jpg"): "not a JPEG, PNG, BMP or GIF",
        str(folder / "truncated.png"): "truncated PNG",
        str(folder / "missing.jpg"): "does not exist",
    }


def test_the_check_names_every_bad_file_and_why(tmp_path: Path) -> None:
    for path, reason in make_bad_files(tmp_path).items():
        assert reason in inspect_file(path), path


@pytest.mark.parametrize("name", ["empty.jpg", "text.jpg", "missing.jpg"])
def test_decoding_a_bad_file_names_it(tmp_path: Path, name: str) -> None:
    make_bad_files(tmp_path)
    with pytest.raises(BadImageError, match=name) as e:
        decode_resize(str(tmp_path / name), SPEC_RGB)
    assert "data.on_bad_image=skip" in str(e.value)


@pytest.fixture
def dataset_with_bad_files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = make_folder_dataset(tmp_path / "ds", {"a": 10, "b": 10})
    bad = make_bad_files(root / "a")
    bad.pop(str(root / "a" / "missing.jpg"))  # a folder cannot list a missing file
    return root, bad


def test_error_policy_stops_before_training_naming_the_file(dataset_with_bad_files) -> None:
    root, bad = dataset_with_bad_files
    manifest = folder_manifest(str(root), val_fraction=0.25)
    with pytest.raises(BadImageError, match=r"Bad image '.*(truncated|empty|text)\.(jpg|png)'") as e:
        drop_bad_images(manifest, "error")
    assert "3 more bad file(s)" in str(e.value)


@pytest.mark.parametrize("loader", LOADER_NAMES)
def test_skip_policy_trains_and_logs_what_it_skipped(make_cfg, tracking_uri, dataset_with_bad_files, loader):
    root, bad = dataset_with_bad_files
    cfg = make_cfg(
        "data=folder",
        f"data.root={root}",
        "data.on_bad_image=skip",
        f"loader={loader}",
        experiment="tests-bad-input",
    )
    assert math.isfinite(train(cfg))
    run = latest_run(tracking_uri, "tests-bad-input")
    assert run.info.status == "FINISHED" and run.data.metrics["skipped_images"] == len(bad)
    listing = MlflowClient(tracking_uri).download_artifacts(run.info.run_id, "skipped_images.tsv")
    assert {line.split("\t")[0] for line in Path(listing).read_text().splitlines()} == set(bad)


def test_csv_listing_a_missing_file_is_named(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "img", {"a": 3, "b": 3})
    rows = [f"img/{c}/{i:03d}.jpg,{c}" for c in "ab" for i in range(3)] + ["img/a/gone.jpg,a"]
    (tmp_path / "t.csv").write_text("path,label\n" + "\n".join(rows))
    manifest = csv_manifest(str(tmp_path / "t.csv"), val_fraction=0.34)
    with pytest.raises(BadImageError, match=r"gone\.jpg': file does not exist"):
        drop_bad_images(manifest, "error")


def test_skipping_that_empties_a_class_is_refused(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    for p in (root / "b").iterdir():
        p.write_bytes(b"")
    with pytest.raises(BadImageError, match="without images of"):
        drop_bad_images(folder_manifest(str(root), val_fraction=0.25), "skip")


@pytest.mark.parametrize("loader", LOADER_NAMES)
def test_a_file_deleted_during_the_run_is_named(tmp_path: Path, loader: str) -> None:
    root = make_folder_dataset(tmp_path / "ds", {"a": 6, "b": 6})
    manifest = folder_manifest(str(root), val_fraction=0.5)
    victim = manifest.train.paths[2]
    Path(victim).unlink()  # after the check, before the pass
    with pytest.raises(Exception, match=Path(victim).name):  # inmemory raises in feed(), others in the pass
        collect(make_loader(loader).feed(manifest.train, ImageDecoder(SPEC_RGB), 4, training=False))
    decoder = ImageDecoder(SPEC_RGB, on_bad_image="skip")
    images, _ = collect(make_loader(loader).feed(manifest.train, decoder, 4, training=False))
    assert len(images) == len(manifest.train) - 1
    assert [path for path, _ in decoder.skipped] == [victim]


def test_resume_continues_the_same_run_from_the_last_epoch(make_cfg, tracking_uri, monkeypatch) -> None:
    import keras

    class InterruptInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

    original = callbacks_module.job_callbacks
    monkeypatch.setattr(
        callbacks_module, "job_callbacks", lambda *a: [*original(*a), InterruptInSecondEpoch()]
    )
    cfg = make_cfg("trainer.epochs=3", experiment="tests-resume")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    killed = latest_run(tracking_uri, "tests-resume")
    assert killed.info.status == "KILLED"
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "best.keras"
    assert keras.models.load_model(checkpoint).output_shape == (None, 4)  # intact

    monkeypatch.setattr(callbacks_module, "job_callbacks", original)
    assert math.isfinite(
        train(
            make_cfg("trainer.epochs=3", f"trainer.resume={cfg.paths.output_dir}", experiment="tests-resume")
        )
    )
    resumed = latest_run(tracking_uri, "tests-resume")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(tracking_uri).get_metric_history(resumed.info.run_id, "val_loss")]
    assert steps == [0, 1, 2]  # epoch 0 from the first attempt; 1 and 2 after the resume


def test_a_crash_while_saving_never_corrupts_the_best_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import keras

    from loaderlab.training.checkpoint import save_atomic

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "best.keras"
    save_atomic(model, path)
    good = path.read_bytes()

    def crash(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomic(model, path)
    assert path.read_bytes() == good


def test_kept_verdicts_reread_only_changed_files_and_still_catch_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder_dataset(tmp_path / "data", {"a": 6, "b": 6})
    paths = tuple(str(p) for p in sorted(root.rglob("*.jpg")))
    listing = sorted(root.rglob("*"))
    inspected: list[str] = []
    real_inspect = validate.inspect_file
    monkeypatch.setattr(validate, "inspect_file", lambda p: inspected.append(p) or real_inspect(p))
    cache = tmp_path / "outputs" / "verdicts"
    assert find_bad_images(paths, cache_dir=cache) == {} and len(inspected) == len(paths)

    inspected.clear()
    assert find_bad_images(paths, cache_dir=cache) == {} and inspected == []  # nothing changed: no reads

    changed = Path(paths[3])
    changed.write_bytes(changed.read_bytes()[:-200])  # truncated after the first run: size and mtime move
    assert find_bad_images(paths, cache_dir=cache) == {paths[3]: "truncated JPEG (no end-of-image marker)"}
    assert inspected == [paths[3]]
    assert sorted(root.rglob("*")) == listing and len(list(cache.iterdir())) == 1  # kept in outputs/ only
    [kept] = cache.iterdir()  # a data format: loading a shared outputs/ never runs code, as a pickle can
    assert json.loads(kept.read_text())[paths[3]][2] == "truncated JPEG (no end-of-image marker)"


def test_a_loader_knob_that_cannot_work_is_its_own_message_not_hydras(make_cfg) -> None:
    """A loader constructor's ValueError reaches the user as that ConfigError, unwrapped from Hydra's
    InstantiationException ("Error in call to target ...")."""
    cfg = make_cfg("loader=packed", "loader.quality=0", experiment="tests-bad-knob")
    with pytest.raises(ConfigError, match=r"^loader.quality must be between 1 and 100. Received: quality=0$"):
        train(cfg)
