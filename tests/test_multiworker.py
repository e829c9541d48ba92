"""strategy=multiworker: worker processes on 127.0.0.1 train in step, refuse what cannot shard,
survive a lost worker with a clear FAILED run, and resume from the last finished epoch."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, train_command
from helpers import free_ports
from loaderlab.data.manifest import make_split
from loaderlab.data.synthetic import synthetic_manifest
from loaderlab.loaders import ImageDecoder, ImageSpec
from loaderlab.loaders.generator import GeneratorLoader
from loaderlab.loaders.inmemory import InMemoryLoader
from loaderlab.loaders.packed import PackedLoader
from loaderlab.loaders.sequence import SequenceLoader
from loaderlab.loaders.tfdata import TFDataLoader
from loaderlab.training.distribute import Worker
from loaderlab.training.distributed import MultiworkerLoaderError, Plan, check_loader, shard
from loaderlab.validate import ConfigError

BATCH = 8
STALL_TIMEOUT_S = 60


def test_shards_are_disjoint_and_cover_the_split() -> None:
    split = make_split([f"{i}.jpg" for i in range(11)], list(range(11)))
    parts = [shard(split, i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part.paths) == sorted(split.paths)
    assert [len(part) for part in parts] == [4, 4, 3]
    assert all(int(part.paths[0][:-4]) == part.labels[0] for part in parts)


def test_plan_gives_every_worker_the_same_full_steps_and_counts_the_dropped() -> None:
    plan = Plan.of(num_train=77, workers=2, global_batch=16)  # shards of 39 and 38 images
    assert (plan.steps, plan.train_images, plan.dropped_images) == (4, 64, 13)
    assert plan.params()["strategy.uneven_shards"] == "drop"
    with pytest.raises(ConfigError, match="lower batch.train"):
        Plan.of(num_train=10, workers=2, global_batch=16)
    # A pack under on_bad_image=skip holds 32 of worker 1's 38 files: the steps its shard fills.
    agreed = plan.agreed([39, 32])
    assert (agreed.steps, agreed.train_images, agreed.dropped_images) == (4, 64, 13)
    agreed = plan.agreed([39, 31])
    assert (agreed.steps, agreed.train_images, agreed.dropped_images) == (3, 48, 29)
    with pytest.raises(ConfigError, match="Lower batch.train"):
        plan.agreed([39, 7])


@pytest.mark.parametrize("loader", [SequenceLoader(), GeneratorLoader(), InMemoryLoader()])
def test_loaders_without_a_tf_data_pipeline_refuse_naming_those_that_work(loader) -> None:
    with pytest.raises(MultiworkerLoaderError, match="loader=tfdata .*loader=tfdata_service"):
        check_loader(loader, Worker(0, 2))
    check_loader(loader, Worker())  # one worker: model.fit takes any loader
    check_loader(TFDataLoader(), Worker(1, 2))


@dataclass
class Cluster:
    """Worker processes started with one TF_CONFIG cluster; output goes to files, not pipes."""

    jobs: list[subprocess.Popen]
    folders: list[Path]
    logs: list[Path]

    def output(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def wait(self, timeout_s: float = 600) -> list[int]:
        return [job.wait(timeout=timeout_s) for job in self.jobs]

    def stop(self) -> None:
        for job in self.jobs:
            if job.poll() is None:
                job.kill()
                job.wait(timeout=60)


def start_cluster(
    outputs: Path, data_root: Path, *overrides: str, workers: int = 2, name: str = "run"
) -> Cluster:
    """`workers` train.py processes on 127.0.0.1, each in its own run folder <outputs>/<name>/worker<i>."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    jobs, folders, logs = [], [], []
    for index in range(workers):
        folder = outputs / name / f"worker{index}"
        folder.mkdir(parents=True)
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        command = train_command(
            outputs,
            data_root,
            *(["strategy=multiworker"] if workers > 1 else []),
            f"batch.train={BATCH}",
            f"batch.val={BATCH}",
            f"hydra.run.dir={folder}",
            *(o.replace("{i}", str(index)) for o in overrides),
        )
        log = folder.parent / f"worker{index}.out"
        with open(log, "w") as out:
            jobs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
        folders.append(folder)
        logs.append(log)
    return Cluster(jobs, folders, logs)


def chief_run(outputs: Path):
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])
    return client, run


def worker_run(folder: Path, index: int):
    client = MlflowClient(f"sqlite:///{folder}/worker{index}-mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])
    return run


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5) -> float:
    """Poll until condition() is true; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - start


@pytest.mark.slow
def test_two_workers_train_in_step_and_the_chief_logs_the_cluster(tmp_path: Path, tiny_root: Path) -> None:
    # loader=packed: one pack of each split, written by one worker and shared (the killed cluster
    # below trains with the default tfdata loader).
    cluster = start_cluster(tmp_path, tiny_root, "loader=packed", "loader.progress=false", "trainer.epochs=2")
    try:
        codes = cluster.wait()
    finally:
        cluster.stop()
    assert codes == [0, 0], cluster.output(0)[-3000:] + cluster.output(1)[-3000:]
    client, run = chief_run(tmp_path)
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert params["strategy.workers"] == "2" and params["strategy.replicas"] == "2"
    assert params["batch.global_train"] == str(2 * BATCH)
    assert params["strategy.uneven_shards"] == "drop"
    val_losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val_losses] == [0, 1] and all(math.isfinite(m.value) for m in val_losses)
    # Validation covers the whole split, not the chief's shard: the logged best val_loss is the
    # best checkpoint's loss over every validation image.
    assert metrics["best_val_loss"] == pytest.approx(whole_split_val_loss(tmp_path, tiny_root), rel=1e-3)
    peaks = [metrics["peak_rss_mb_worker0"], metrics["peak_rss_mb_worker1"]]
    assert min(peaks) > 100 and metrics["peak_rss_mb"] == max(peaks)
    assert metrics["images_per_sec"] > 0
    # Both workers end with the same weights: each wrote the checksum to its own store.
    other = worker_run(cluster.folders[1], 1)
    assert run.data.tags["weights_sha256"] == other.data.tags["weights_sha256"]
    assert not (tmp_path / "run" / "worker1" / "backup").exists()  # only the chief keeps checkpoints
    assert run.data.params["loader._target_"].endswith("PackedLoader")
    packs = [json.loads(meta.read_text()) for meta in (tmp_path / "packed").glob("*/pack.json")]
    manifest = synthetic_manifest(str(tiny_root), **TINY, val_fraction=0.2, split_seed=0)
    assert sorted((p["split"], p["records"]) for p in packs) == [
        ("train", len(manifest.train)),
        ("val", len(manifest.val)),
    ]  # one pack per split, shared by both workers


def whole_split_val_loss(outputs: Path, data_root: Path) -> float:
    """The best checkpoint's mean loss over the whole validation split: both workers' parts of its pack."""
    import keras

    manifest = synthetic_manifest(str(data_root), **TINY, val_fraction=0.2, split_seed=0)
    decoder = ImageDecoder(ImageSpec(32, 32, 3))
    packed = PackedLoader(root=str(outputs / "packed"), progress=False)
    model = keras.models.load_model(outputs / "run" / "worker0" / "checkpoints" / "best.keras")
    assert packed.pack(manifest.val, decoder, training=False).reused  # the pack both workers validated on
    probs = model.predict(packed.dataset(manifest.val, decoder, 8, training=False), verbose=0)
    return float(np.mean(keras.losses.sparse_categorical_crossentropy(manifest.val.labels, probs)))


@pytest.mark.slow
def test_sequence_under_multiworker_stops_both_workers_with_the_loaders_that_work(
    tmp_path: Path, tiny_root: Path
) -> None:
    cluster = start_cluster(tmp_path, tiny_root, "loader=sequence", "trainer.epochs=1")
    try:
        codes = cluster.wait(timeout_s=300)
    finally:
        cluster.stop()
    assert codes == [2, 2]  # a config error: its message alone, exit code 2
    assert all("loader=tfdata" in cluster.output(i) for i in range(2))
    _, run = chief_run(tmp_path)
    assert run.info.status == "FAILED" and "loader=sequence does not run" in run.data.tags["error"]


def test_the_heartbeat_timeout_reaches_tensorflows_coordination_service() -> None:
    """strategy.heartbeat_timeout_s is in the coordination service's config the strategy starts with
    (it configures its own only where none is set), in a one-worker cluster of its own process."""
    script = (
        "from loaderlab.training.cluster import multiworker_strategy\n"
        "from tensorflow.python.eager import context\n"
        "multiworker_strategy(heartbeat_timeout_s=7)\n"
        "print('TIMEOUT_MS', context.context().coordination_service.heartbeat_timeout_in_ms)\n"
    )
    [port] = free_ports(1)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert "TIMEOUT_MS 7000" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_a_worker_unheard_past_the_heartbeat_timeout_fails_the_run_naming_the_setting(
    tmp_path: Path, tiny_root: Path
) -> None:
    """Worker 1 stopped (SIGSTOP: its address still takes connections) under a 3 s heartbeat timeout:
    the chief's run ends FAILED with a message that names strategy.heartbeat_timeout_s."""
    cluster = start_cluster(
        tmp_path, tiny_root, "trainer.epochs=50", "~callbacks.early_stopping",
        "strategy.heartbeat_timeout_s=3", "trainer.stall_timeout_s=600",
    )  # fmt: skip
    try:
        first = cluster.folders[0] / "backup" / "ckpt-1.index"
        wait_for(lambda: first.exists() or cluster.jobs[0].poll() is not None, 600, "epoch-1 checkpoint")
        cluster.jobs[1].send_signal(signal.SIGSTOP)
        wait_for(lambda: cluster.jobs[0].poll() is not None, 300, "chief exit")
    finally:
        cluster.stop()  # SIGKILL ends a stopped process too
    assert cluster.jobs[0].returncode != 0, cluster.output(0)[-3000:]
    _, run = chief_run(tmp_path)
    assert run.info.status == "FAILED", cluster.output(0)[-3000:]
    assert "raise strategy.heartbeat_timeout_s" in run.data.tags["error"], run.data.tags["error"]


@pytest.fixture(scope="module")
def killed_cluster(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path):
    """Two workers, worker 1 killed with SIGKILL during epoch 2; (outputs, cluster, seconds to end)."""
    outputs = tmp_path_factory.mktemp("killed")
    cluster = start_cluster(
        outputs, tiny_root, "trainer.epochs=8", f"trainer.stall_timeout_s={STALL_TIMEOUT_S}"
    )
    try:
        # The chief's checkpoint of epoch 1 exists once epoch 1 has ended: epoch 2 is under way.
        first = cluster.folders[0] / "backup" / "ckpt-1.index"
        wait_for(lambda: first.exists() or cluster.jobs[0].poll() is not None, 600, "epoch-1 checkpoint")
        assert cluster.jobs[0].poll() is None, cluster.output(0)[-3000:]
        cluster.jobs[1].send_signal(signal.SIGKILL)
        seconds = wait_for(lambda: cluster.jobs[0].poll() is not None, 3 * STALL_TIMEOUT_S, "chief exit")
        yield outputs, cluster, seconds
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_killed_worker_ends_the_other_with_a_failed_run_naming_it(killed_cluster) -> None:
    outputs, cluster, seconds = killed_cluster
    assert seconds < STALL_TIMEOUT_S + 30  # the stall, then the run ended and the tree stopped
    assert cluster.jobs[0].returncode != 0
    assert "Lost worker 1 (127.0.0.1:" in cluster.output(0)
    _, run = chief_run(outputs)
    assert run.info.status == "FAILED" and "Lost worker 1" in run.data.tags["error"]


@pytest.mark.slow
def test_resume_after_a_kill_continues_from_the_last_finished_epoch(killed_cluster, tiny_root: Path) -> None:
    outputs, killed, _ = killed_cluster
    _, before = chief_run(outputs)
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    done = len(client.get_metric_history(before.info.run_id, "val_loss"))
    assert done >= 1
    cluster = start_cluster(
        outputs,
        tiny_root,
        f"trainer.epochs={done + 1}",
        f"trainer.resume={outputs}/run/worker{{i}}",
        name="resumed",
    )
    try:
        codes = cluster.wait()
    finally:
        cluster.stop()
    assert codes == [0, 0], cluster.output(0)[-3000:] + cluster.output(1)[-3000:]
    assert f"at epoch {done}" in cluster.output(0)
    _, run = chief_run(outputs)  # the same run, continued
    assert run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(done + 1))
    other = worker_run(outputs / "run" / "worker1", 1)  # worker 1's store is in the folder it resumed
    assert other.data.tags["weights_sha256"] == run.data.tags["weights_sha256"]
