"""The measurements themselves: process-tree memory, GPU memory (faked), steady-state throughput."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from loaderlab.monitor import GpuMemory, MemorySampler, ThroughputTracker
from loaderlab.utils.system import MB

HOLD_MB = 300


# A parent of its own, idle, that starts one child on request; the sampler reads that parent's tree,
# so nothing else this test process holds or frees (other tests' servers and heaps) is counted.
PARENT = (
    "import subprocess, sys\n"
    "print('up', flush=True)\n"
    "sys.stdin.readline()\n"
    "hold = f'import numpy as np, time; a = np.ones({HOLD_MB} * 2**20, np.uint8); "
    'print("ready", flush=True); time.sleep(120)\'\n'
    "child = subprocess.Popen([sys.executable, '-c', hold], stdout=subprocess.PIPE, text=True)\n"
    "print(child.stdout.readline().strip(), flush=True)\n"
    "child.wait()\n"
)


def test_sampler_sees_a_known_allocation_in_a_child_process() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.replace("{HOLD_MB}", str(HOLD_MB))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline().strip() == "up"
        sampler = MemorySampler(pid=parent.pid, interval_s=0.02)
        before = sampler.start().sample()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "ready"
        peak = sampler.stop()
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in psutil.Process(parent.pid).children(recursive=True):
                proc.kill()
        parent.kill()
        parent.wait()
    grew_mb = (peak - before) / MB
    # the array, plus the child's interpreter and numpy (tens of MB)
    assert HOLD_MB <= grew_mb <= HOLD_MB + 80, f"peak grew {grew_mb:.0f} MB for a {HOLD_MB} MB child"


def _hold_until(done) -> None:
    done.wait(120)  # alive, sharing the parent's pages, until the parent has sampled


@pytest.mark.skipif(sys.platform != "linux", reason="PSS is Linux-only")
def test_pages_shared_with_a_forked_child_count_once() -> None:
    sampler = MemorySampler()
    assert sampler.method == "pss_sum"
    data = np.ones(HOLD_MB * MB, np.uint8)  # resident in the parent
    before = sampler.sample()
    fork = mp.get_context("fork")
    done = fork.Event()
    child = fork.Process(target=_hold_until, args=(done,))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while child.pid not in {c.pid for c in psutil.Process().children()} and time.monotonic() < deadline:
            time.sleep(0.05)
        with_child = sampler.sample()
        assert child.is_alive()
    finally:
        done.set()
        child.join()
    # Summed RSS would count the 300 MB twice; summed PSS splits the shared pages.
    assert (with_child - before) / MB < 60
    del data


class FakeDevices:
    """A DeviceMemorySource with scripted peaks."""

    def __init__(self, peaks: dict[str, int]):
        self.peaks, self.resets = peaks, []

    def devices(self) -> list[str]:
        return list(self.peaks)

    def describe(self, device: str) -> str:
        return f"{device} FakeGPU"

    def reset_peak(self, device: str) -> None:
        self.resets.append(device)

    def peak_bytes(self, device: str) -> int:
        return self.peaks[device]


def test_gpu_peak_is_the_largest_device_peak_after_reset() -> None:
    source = FakeDevices({"GPU:0": 512 * MB, "GPU:1": 768 * MB})
    gpu = GpuMemory(source)
    gpu.reset()
    assert source.resets == ["GPU:0", "GPU:1"]
    assert gpu.peak_mb() == 768
    assert gpu.device == "GPU:0 FakeGPU, GPU:1 FakeGPU"


def test_no_gpu_means_no_figure_not_zero() -> None:
    gpu = GpuMemory(FakeDevices({}))
    assert gpu.peak_mb() is None
    assert gpu.device == "CPU"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epochs(tracker: ThroughputTracker, clock: FakeClock, step_times: list[list[float]]) -> None:
    tracker.fit_start()
    for steps in step_times:
        tracker.epoch_begin()
        for dt in steps:
            clock.now += dt
            tracker.step_end(10)
        clock.now += 5.0  # validation: not training time
        tracker.epoch_end()


def test_throughput_leaves_out_the_first_epoch() -> None:
    clock = FakeClock()
    tracker = ThroughputTracker(images_per_epoch=40, clock=clock)
    run_epochs(tracker, clock, [[3.0, 0.1, 0.1, 0.1], [0.1] * 4, [0.1] * 4])
    assert tracker.time_to_first_batch_s == pytest.approx(3.0)
    assert tracker.steady_images_per_sec() == pytest.approx(80 / 0.8)
    assert tracker.epochs[1].epoch_time_s == pytest.approx(5.4)


def test_throughput_with_one_epoch_leaves_out_the_first_step() -> None:
    clock = FakeClock()
    tracker = ThroughputTracker(images_per_epoch=40, clock=clock)
    run_epochs(tracker, clock, [[3.0, 0.1, 0.1, 0.1]])
    assert tracker.steady_images_per_sec() == pytest.approx(30 / 0.3)


def test_nvml_cross_check_samples_device_memory_or_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from loaderlab.monitor import NvmlMemory

    used = iter([100 * MB, 700 * MB, 300 * MB])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=next(used)),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml = NvmlMemory()
    sampler = MemorySampler(probes=[nvml.sample])
    for _ in range(3):
        sampler.sample()
    assert nvml.peak_mb() == 700
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: no figure, never a zero
    assert NvmlMemory().peak_mb() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit below
def test_the_stall_watchdog_counts_from_the_start_of_training_not_from_its_creation() -> None:
    """A first pack, or a wait for other workers' packs, comes before training: it is no stall."""
    import threading

    from loaderlab.training.watchdog import StallWatchdog

    fired = threading.Event()

    def on_stall(message: str) -> None:
        fired.set()
        raise SystemExit  # ends the watchdog's thread here, before it would end the process

    with StallWatchdog(0.2, on_stall, poll_s=0.02) as watchdog:
        assert not fired.wait(2.0)  # ten timeouts and a hundred polls before training starts: no stall
        watchdog.on_train_begin()
        assert fired.wait(120)  # training started and no step finished: a stall


def _system_metrics(client, run_id: str) -> list[str]:
    return sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("system/"))


def test_system_metrics_are_logged_for_the_run_when_on_and_none_when_off(tmp_path) -> None:
    """tracking.system_metrics: MLflow's system/* metrics in the run, from a monitor the job starts and
    stops (no global state); two jobs side by side, one on, one off."""
    import threading

    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from loaderlab.run_log import RunLog
    from loaderlab.training.monitors import Monitors

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("system", artifact_location=(tmp_path / "a").as_uri())
    jobs = {}
    for on in (True, False):
        run_id = client.create_run(experiment_id).info.run_id
        cfg = OmegaConf.create(
            {
                "trainer": {"seed": 0},
                "tracking": {
                    "memory_interval_s": 0.1,
                    "system_metrics": on,
                    "system_metrics_interval_s": 0.2,
                },
            }
        )
        run_log = RunLog(uri, run_id, tmp_path / str(on))
        jobs[on] = (run_id, run_log, Monitors.create(cfg, run_log, images_per_epoch=10))
    assert jobs[True][2].system is not None and jobs[False][2].system is None
    try:
        for _, _, monitors in jobs.values():
            monitors.start()
        deadline = time.monotonic() + 120
        while not _system_metrics(client, jobs[True][0]) and time.monotonic() < deadline:
            time.sleep(0.1)  # the first sample is logged after one interval
    finally:  # as train() stops its monitors: in every ending
        summaries = {on: monitors.stop() for on, (_, _, monitors) in jobs.items()}
        for _, run_log, _ in jobs.values():
            run_log.close("FINISHED", 30)
    assert "system/cpu_utilization_percentage" in _system_metrics(client, jobs[True][0])
    assert _system_metrics(client, jobs[False][0]) == []
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # stopped
    assert all("peak_rss_mb" in summary for summary in summaries.values())  # the project's own, as before
    assert "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING" not in os.environ  # MLflow's global switch untouched
