"""What a run costs: process-tree memory, GPU memory and steady-state throughput."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from loaderlab.utils.system import MB


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pss_available() -> bool:
    """True where the kernel reports proportional set size (Linux)."""
    try:
        return getattr(psutil.Process().memory_full_info(), "pss", None) is not None
    except (psutil.AccessDenied, NotImplementedError):
        return False


class MemorySampler:
    """Samples the memory of a process and its live children in a background thread.

    Uses the sum of PSS where the OS has it, so pages shared between forked workers count
    once; otherwise the sum of RSS. `method` says which ("pss_sum" or "rss_sum").
    """

    def __init__(
        self, pid: int | None = None, interval_s: float = 0.1, probes: list[Callable[[], None]] = ()
    ):
        self.process = psutil.Process(pid or os.getpid())
        self.interval_s = interval_s
        self.probes = list(probes)  # also run at every sample, e.g. NvmlMemory.sample
        self.method = "pss_sum" if pss_available() else "rss_sum"
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Current memory of the process tree, in bytes; also updates the peak."""
        total = 0
        for proc in _tree(self.process):
            try:
                info = proc.memory_full_info() if self.method == "pss_sum" else proc.memory_info()
                total += info.pss if self.method == "pss_sum" else info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that just exited holds nothing any more
        self.peak_bytes = max(self.peak_bytes, total)
        for probe in self.probes:
            probe()
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> MemorySampler:
        """Start sampling; the peak so far is kept."""
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (with one last sample) and return the peak in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.peak_bytes

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DeviceMemorySource(Protocol):
    """Where GPU memory figures come from; TensorFlow in a run, a fake in tests."""

    def devices(self) -> list[str]: ...
    def describe(self, device: str) -> str: ...
    def reset_peak(self, device: str) -> None: ...
    def peak_bytes(self, device: str) -> int: ...


class TensorFlowMemory:
    """TensorFlow's own allocator statistics for visible GPUs."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf
        self._gpus = tf.config.list_physical_devices("GPU")
        for gpu in self._gpus:
            # Growth on, so the peak is what was used, not the whole card. RuntimeError: the
            # GPU was initialised already; the figures stay valid, only less tight.
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)

    def devices(self) -> list[str]:
        return [f"GPU:{i}" for i in range(len(self._gpus))]

    def describe(self, device: str) -> str:
        details = self.tf.config.experimental.get_device_details(self._gpus[int(device.split(":")[1])])
        return f"{device} {details.get('device_name', '')}".strip()

    def reset_peak(self, device: str) -> None:
        self.tf.config.experimental.reset_memory_stats(device)

    def peak_bytes(self, device: str) -> int:
        return int(self.tf.config.experimental.get_memory_info(device)["peak"])


@dataclass
class GpuMemory:
    """Peak GPU memory over a run, or None where no GPU is visible (never a fake zero)."""

    source: DeviceMemorySource

    @property
    def device(self) -> str:
        """The `device` tag: the GPUs used, or 'CPU'."""
        devices = self.source.devices()
        return ", ".join(self.source.describe(d) for d in devices) if devices else "CPU"

    def reset(self) -> None:
        """Start a new peak on every GPU."""
        for d in self.source.devices():
            self.source.reset_peak(d)

    def peak_mb(self) -> float | None:
        """The largest per-GPU peak since reset, in MB; None without a GPU."""
        devices = self.source.devices()
        if not devices:
            return None
        return max(self.source.peak_bytes(d) for d in devices) / MB


class NvmlMemory:
    """Device-wide GPU memory in use, read through NVML (the `gpu` extra): a cross-check of gpu_peak_mb.

    It counts every process on the GPUs, and memory TensorFlow reserved but did not allocate, so it
    is at least TensorFlow's own peak. Without nvidia-ml-py or a GPU it measures nothing (peak_mb None).
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list = []
        self.peak_bytes = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - not installed, no driver, no GPU: nothing to measure
            self._handles = []

    def sample(self) -> None:
        """Read the memory in use on every GPU; keep the largest."""
        for handle in self._handles:
            self.peak_bytes = max(self.peak_bytes, int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used))

    def peak_mb(self) -> float | None:
        """The largest per-GPU use seen, in MB; None where NVML sees no GPU."""
        return self.peak_bytes / MB if self._handles else None


@dataclass
class EpochTiming:
    """One epoch's figures."""

    train_time_s: float
    train_images: int
    epoch_time_s: float


@dataclass
class ThroughputTracker:
    """Counts images and times training steps; keeps the first epoch (or first step) out of the rate."""

    images_per_epoch: int
    clock: Callable[[], float] = time.perf_counter
    fit_started_at: float | None = None
    time_to_first_batch_s: float | None = None
    epochs: list[EpochTiming] = field(default_factory=list)
    first_step_end: float | None = None
    first_step_images: int = 0
    _epoch_start: float = 0.0
    _last_step_end: float = 0.0
    _steps: int = 0

    def fit_start(self) -> None:
        self.fit_started_at = self.clock()

    def epoch_begin(self) -> None:
        self._epoch_start = self._last_step_end = self.clock()
        self._steps = 0

    def step_end(self, batch_images: int) -> None:
        now = self.clock()
        self._last_step_end = now
        self._steps += 1
        if self.time_to_first_batch_s is None and self.fit_started_at is not None:
            self.time_to_first_batch_s = now - self.fit_started_at
        if self.first_step_end is None:
            self.first_step_end, self.first_step_images = now, batch_images

    def epoch_end(self) -> EpochTiming:
        timing = EpochTiming(
            train_time_s=self._last_step_end - self._epoch_start,
            train_images=self.images_per_epoch,
            epoch_time_s=self.clock() - self._epoch_start,
        )
        self.epochs.append(timing)
        return timing

    def steady_images_per_sec(self) -> float | None:
        """Images/s over epochs 2..N; with one epoch, over all steps after the first."""
        later = self.epochs[1:]
        if later:
            return sum(e.train_images for e in later) / sum(e.train_time_s for e in later)
        if self.epochs and self.first_step_end is not None:
            elapsed = self._last_step_end - self.first_step_end
            images = self.epochs[0].train_images - self.first_step_images
            return images / elapsed if elapsed > 0 and images > 0 else None
        return None
