"""One Python process, many jobs, as in a notebook, an in-process sweep or pytest itself: whatever way a
job ends, nothing it started outlives it, and the next job is measured and filed as if it were first."""

from __future__ import annotations

import atexit
import gc
import math
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import keras
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR, TINY
from helpers import make_folder_dataset, photo_like
from loaderlab.loaders.decode import BadImageError
from loaderlab.loaders.sequence import PathBatches
from loaderlab.training import callbacks as callbacks_module
from loaderlab.training.run import train
from loaderlab.validate import ConfigError, inspect_file

pytestmark = pytest.mark.slow
STALL_S = 20  # every job's watchdog (above a slow first step); the process must outlive twice that
# TensorFlow 2.21 itself keeps about 20 MB of native memory per model fitted in a process, even after
# keras.backend.clear_session() and malloc_trim (a bare Keras loop, README "Many jobs in one process").
TF_GROWTH_PER_MODEL_MB = 25


def corrupt_body_jpeg(path: Path) -> Path:
    """A JPEG with a valid header and end marker whose scan is broken: the bad-file pass lets it
    through, and it fails only when decoded, mid-fit."""
    ok, data = cv2.imencode(".jpg", photo_like(48, 48))
    data = data.tobytes()
    scan = data.find(b"\xff\xda")
    path.write_bytes(data[:scan] + b"\xff\xda\x00\x02\xff\xff\xff\xff\xff\xd9")
    assert inspect_file(str(path)) is None  # it passes the up-front check
    return path


def process_state() -> dict:
    """What a job could leave behind in this process."""
    return {
        "threads": {t for t in threading.enumerate() if t.is_alive()},
        "SIGTERM": signal.getsignal(signal.SIGTERM),
        "SIGINT": signal.getsignal(signal.SIGINT),
        "environ": dict(os.environ),
        "atexit": atexit._ncallbacks(),
        "buffers": {id(o) for o in gc.get_objects() if isinstance(o, PathBatches)},  # other tests' too
    }


def assert_nothing_left(before: dict, job: str) -> None:
    """The process is as the job found it: threads (waited for, generously), handlers, env, atexit."""
    deadline = time.monotonic() + 60
    while True:
        after = process_state()
        new = [t for t in after["threads"] - before["threads"] if t.is_alive()]
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not new, f"{job} left threads: {[t.name for t in new]}"
    gc.collect()
    held = [
        o
        for o in gc.get_objects()
        if isinstance(o, PathBatches) and id(o) not in before["buffers"] and (o.ring is not None or o._ahead)
    ]
    assert not held, f"{job} left PyDataset batch buffers reachable"
    for key in ("SIGTERM", "SIGINT", "environ", "atexit"):
        assert after[key] == before[key], f"{job} left {key} changed"


def runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


class SigtermAtBatch(keras.callbacks.Callback):
    """SIGTERM to this process mid-epoch, as `kill` would send it."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            signal.raise_signal(signal.SIGTERM)


def sweep_in_process(*overrides: str) -> None:
    """python src/train.py -m ... with hydra/launcher=basic, run in this process."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        GlobalHydra.instance().hydra.multirun(
            config_name="config", task_function=train, overrides=list(overrides), with_log_configuration=False
        )


def test_many_jobs_in_one_process_leave_nothing_behind(
    make_cfg, tmp_path: Path, tiny_root: Path, tracking_uri: str, monkeypatch
) -> None:
    experiment = "one-process"
    bad_root = make_folder_dataset(tmp_path / "bad", {"a": 12, "b": 12})
    corrupt_body_jpeg(bad_root / "a" / "005.jpg")
    common = [f"trainer.stall_timeout_s={STALL_S}", "trainer.epochs=2"]

    def job(name: str, *overrides: str):
        cfg = make_cfg(*common, *overrides, experiment=experiment)
        cfg.paths.output_dir = str(tmp_path / name)
        return cfg

    train(job("warm-up"))  # first-use costs of TensorFlow and MLflow, paid once per process
    gc.collect()
    clean = process_state()
    assert math.isfinite(train(job("first")))
    assert_nothing_left(clean, "a normal job")

    for loader in ("sequence", "tfdata", "generator"):  # a bad file met mid-fit, in a worker or not
        with pytest.raises(Exception) as failed:
            train(job(f"bad-{loader}", "data=folder", f"data.root={bad_root}", f"loader={loader}"))
        assert "005.jpg" in str(failed.value) or isinstance(failed.value, BadImageError)
        del failed
        assert_nothing_left(clean, f"a {loader} job that raised mid-fit")

    original = callbacks_module.job_callbacks
    monkeypatch.setattr(callbacks_module, "job_callbacks", lambda *a: [*original(*a), SigtermAtBatch()])
    with pytest.raises(KeyboardInterrupt):
        train(job("sigterm", "loader=sequence", "batch.train=4"))
    monkeypatch.setattr(callbacks_module, "job_callbacks", original)
    last_fit_ended = time.monotonic()  # the last job whose fit started a watchdog and did not finish
    assert_nothing_left(clean, "a job stopped by SIGTERM mid-epoch")

    with pytest.raises(ConfigError):
        train(job("config-error", "batch.train=0"))
    assert not (tmp_path / "config-error" / "mlflow_run_id").exists()  # nothing to resume
    assert_nothing_left(clean, "a job with a config error")

    sweep_dir = tmp_path / "sweep"
    with pytest.raises(ConfigError):
        sweep_in_process(
            "hydra/launcher=basic",
            f"hydra.sweep.dir={sweep_dir}",
            f"paths.outputs={tmp_path}",
            f"data.root={tiny_root}",
            *(f"data.{k}={v}" for k, v in TINY.items()),
            "model.input_size=32",
            "trainer.verbose=0",
            "trainer.epochs=1",
            f"tracking.uri={tracking_uri}",
            f"tracking.experiment={experiment}",
            "batch.train=16,0",  # the second job fails
        )
    assert_nothing_left(clean, "a sweep whose job failed")

    gc.collect()
    last_cfg = job("last")
    assert math.isfinite(train(last_cfg))
    assert_nothing_left(clean, "the last normal job")
    # A watchdog left running by any job that failed mid-fit would have ended this process by now.
    time.sleep(max(0.0, last_fit_ended + 2 * STALL_S + 2 - time.monotonic()))

    all_runs = runs(tracking_uri, experiment)
    by_folder = {r.data.params.get("paths.output_dir"): r for r in all_runs}
    first, last = by_folder[str(tmp_path / "first")], by_folder[str(last_cfg.paths.output_dir)]
    statuses = {name: by_folder[str(tmp_path / name)].info.status for name in ("bad-sequence", "sigterm")}
    assert statuses == {"bad-sequence": "FAILED", "sigterm": "KILLED"}
    assert "005.jpg" in by_folder[str(tmp_path / "bad-tfdata")].data.tags["error"]  # not a stall message
    [parent] = [r for r in all_runs if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "FAILED"
    sweep_jobs = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.status for r in sweep_jobs} == {"FINISHED", "FAILED"}
    assert {r.data.tags["process_isolated"] for r in sweep_jobs} == {"false"}  # the basic launcher says so
    assert last.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in last.data.tags and last.data.tags["sweep_id"] == "none"
    assert last.data.tags["loader"] == "tfdata" and last.info.run_name == "tfdata-small_cnn"
    drift = last.data.metrics["baseline_rss_mb"] - first.data.metrics["baseline_rss_mb"]
    models_between = 6  # first, three failed mid-fit, SIGTERM, the sweep's job that trained
    print(f"\nbaseline_rss_mb first={first.data.metrics['baseline_rss_mb']:.0f} drift={drift:+.1f} MB")
    assert drift <= 50 + TF_GROWTH_PER_MODEL_MB * models_between


def test_a_second_job_into_the_same_folder_does_not_continue_the_first(make_cfg, tracking_uri: str) -> None:
    cfg = make_cfg(experiment="same-folder")
    train(cfg)
    with pytest.raises(ConfigError, match="trainer.resume="):
        train(cfg)
    [first] = runs(tracking_uri, "same-folder")  # a config error opens no run
    assert first.info.status == "FINISHED"
