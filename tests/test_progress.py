"""Progress on long work: packing, the bad-file pass, a store's listing, delivering a journal and the
synthetic set show a count, a rate and the time left on a terminal or with LOADERLAB_PROGRESS=1, and
nothing in a log (pytest's capture is not a terminal), under progress=False or trainer.verbose=0."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONF_DIR
from helpers import make_folder_dataset
from loaderlab import PROJECT_ROOT
from loaderlab.data.folder import folder_manifest
from loaderlab.utils.progress import ENV, Progress, counted, shown

COUNTS = {"a": 12, "b": 12}  # 24 files of 24x32 px
RATE = re.compile(r"\d+\.\d (images|files|objects|records)/s")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "images", COUNTS)


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")


@pytest.fixture
def unforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def pack(dataset: Path, root: Path, progress: bool = True) -> None:
    from loaderlab.data.pack import PackSpec, pack_split

    pack_split(folder_manifest(str(dataset), val_fraction=0.25).train, "train", PackSpec(32), root, workers=1,
               progress=progress)  # fmt: skip


def test_a_terminal_shows_count_rate_and_time_left_redrawn_in_place(unforced: None) -> None:
    terminal = Terminal()
    with Progress(20, "image", "Packing 20 images", stream=terminal) as bar:
        bar.update(5)
        mid = terminal.getvalue()
        time.sleep(0.15)  # past the redraw interval
        bar.update(20)
    assert mid.startswith("Packing 20 images\n\r5/20 images [")
    assert "25%" in mid and RATE.search(mid) and re.search(r"\d+(\.\d)?s left", mid)
    assert terminal.getvalue().endswith("\n") and "\r20/20 images [" in terminal.getvalue()
    assert "left" not in terminal.getvalue().rsplit("\r", 1)[-1]  # done: the time it took instead


def test_the_variable_decides_where_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert shown(True, Terminal()) and not shown(True, io.StringIO())
    monkeypatch.setenv(ENV, "1")
    assert shown(True, io.StringIO()) and not shown(False, Terminal())
    monkeypatch.setenv(ENV, "0")
    assert not shown(True, Terminal())


def test_a_count_without_a_total_shows_count_and_rate(forced: None) -> None:
    log = io.StringIO()
    with Progress(None, "object", "Listing", stream=log) as bar:
        bar.update(300)
    assert log.getvalue().startswith("Listing\n300 objects - ") and RATE.search(log.getvalue())


def test_packing_shows_images_rate_and_total_when_forced(
    forced: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pack(dataset, tmp_path / "packs")
    err = capsys.readouterr().err
    assert "Packing 18 images, shorter side 32 px" in err
    assert "18/18 images [" in err and RATE.search(err) and "100%" in err


def test_the_bad_file_pass_shows_files_and_rate_when_forced(
    forced: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from loaderlab.validate import drop_bad_images

    manifest = folder_manifest(str(dataset))
    drop_bad_images(manifest, "error", tmp_path / "verdicts")
    err = capsys.readouterr().err
    assert "Checking 24 new or changed files of 24" in err and "24/24 files" in err and RATE.search(err)
    drop_bad_images(manifest, "error", tmp_path / "verdicts")  # every verdict cached: nothing read
    assert capsys.readouterr().err == ""


def test_a_listing_shows_the_objects_found_and_their_rate_when_forced(
    forced: None, capsys: pytest.CaptureFixture
) -> None:
    import fsspec

    from loaderlab.data.storage import Storage

    fs = fsspec.filesystem("memory")
    for i in range(30):
        fs.pipe(f"/progress-test/cls{i % 3}/{i}.jpg", b"x")
    try:
        found = Storage().list_files("memory://progress-test")
    finally:
        fs.rm("/progress-test", recursive=True)
    err = capsys.readouterr().err
    assert len(found) == 30
    assert "Listing memory://progress-test" in err and "30 objects - " in err and RATE.search(err)


def test_the_synthetic_set_shows_its_progress_on_the_same_writer(
    forced: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from loaderlab.data.synthetic import generate

    generate(tmp_path / "synthetic", 16, 24, 4, seed=0, workers=1)
    err = capsys.readouterr().err
    assert "Generating 16 synthetic images" in err and "16/16 images [" in err and RATE.search(err)


def test_a_log_shows_nothing_unless_forced(
    unforced: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from loaderlab.validate import drop_bad_images

    drop_bad_images(folder_manifest(str(dataset)), "error")
    pack(dataset, tmp_path / "packs")
    assert capsys.readouterr() == ("", "")


def test_progress_false_shows_nothing_even_when_forced(
    forced: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from loaderlab.validate import drop_bad_images

    drop_bad_images(folder_manifest(str(dataset)), "error", progress=False)
    pack(dataset, tmp_path / "packs", progress=False)
    assert list(counted(range(5), 5, progress=False)) == [0, 1, 2, 3, 4]
    assert capsys.readouterr() == ("", "")


APP = """
import hydra

import loaderlab  # the ${project_root:} resolver
from loaderlab.training.run import _read_manifest


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg):
    _read_manifest(cfg)  # a training job's bad-file pass, as train() calls it


main()
"""


@pytest.mark.parametrize("verbose", ["0", "2"])
def test_a_hydra_job_with_trainer_verbose_0_shows_nothing(
    verbose: str, dataset: Path, tmp_path: Path
) -> None:
    """A real Hydra job on the project's config: the training job's bad-file pass follows trainer.verbose."""
    app = tmp_path / "app.py"
    app.write_text(APP.replace("CONF_DIR", repr(CONF_DIR)))
    command = [
        sys.executable, str(app), "data=folder", f"data.root={dataset}", f"paths.outputs={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}", f"trainer.verbose={verbose}",
    ]  # fmt: skip
    env = os.environ | {ENV: "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    shows = "24/24 files" in done.stderr
    assert shows == (verbose != "0"), done.stderr


def journal(folder: Path, records: int) -> Path:
    """A run's journal of `records` metric records, left for deliver.py, and its sqlite store."""
    from mlflow.tracking import MlflowClient

    from loaderlab.journal import journal_path

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    path = journal_path(folder, run_id)
    lines = [{"uri": uri, "run_id": run_id, "parent_run_id": None}]
    lines += [{"metrics": {"loss": 1 / (i + 1)}, "step": i, "timestamp": int(time.time() * 1000)}
              for i in range(records)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_delivering_a_journal_shows_records_and_rate_and_deliver_py_quiet_shows_none(
    forced: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from loaderlab.delivery import deliver_journal

    path = journal(tmp_path / "first", 5)
    assert deliver_journal(path) == (0, 0, None)
    err = capsys.readouterr().err
    assert f"Delivering 5 records of {path}" in err and "5/5 records [" in err and RATE.search(err)
    journal(tmp_path / "second", 5)
    command = [sys.executable, str(PROJECT_ROOT / "src" / "deliver.py"), "--quiet", str(tmp_path / "second")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ | {ENV: "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "delivered" in done.stdout and "records" not in done.stderr
