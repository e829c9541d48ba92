"""Everything that measures one job: memory sampler, GPU peak, throughput, created and started apart."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from loaderlab.monitor import GpuMemory, MemorySampler, NvmlMemory, TensorFlowMemory, ThroughputTracker
from loaderlab.run_log import RunLog
from loaderlab.utils.system import MB

log = logging.getLogger(__name__)


class SystemMetrics:
    """MLflow's system metrics (system/cpu_utilization_percentage, ...) for one run, in a thread of its
    own that the job starts and stops; unlike mlflow.enable_system_metrics_logging, no global state."""

    def __init__(self, uri: str, run_id: str, interval_s: float, stop_timeout_s: float = 30.0):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a resumed run's samples go on from its last step (a new run's start at 0)
        self._monitor: Any = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=uri
        )
        self._stop_timeout_s = stop_timeout_s
        self._started = False

    def start(self) -> None:
        """Start sampling; the first sample is logged after one interval."""
        self._monitor.start()
        self._started = True

    def stop(self) -> None:
        """Stop the thread and flush what it holds; a store that does not answer is waited on for a while
        only (MLflow's retries take minutes), since these samples are not part of the run's journal."""
        if not self._started:
            return
        self._started = False
        finisher = threading.Thread(target=self._monitor.finish, name="system-metrics-stop", daemon=True)
        finisher.start()
        finisher.join(self._stop_timeout_s)
        if finisher.is_alive():
            log.warning(
                "MLflow's system metrics monitor did not stop within %g s (the tracking store does not "
                "answer); its last samples may be lost.",
                self._stop_timeout_s,
            )


@dataclass
class Monitors:
    """Everything that measures the run: memory sampler, GPU peak, throughput, MLflow's system metrics."""

    sampler: MemorySampler
    gpu: GpuMemory
    nvml: NvmlMemory
    throughput: ThroughputTracker
    baseline_bytes: int | None = None
    system: SystemMetrics | None = None  # tracking.system_metrics=true

    @classmethod
    def create(cls, cfg: DictConfig, run_log: RunLog, images_per_epoch: int) -> Monitors:
        """Seed Keras and tag how memory is measured; nothing runs until start()."""
        import keras

        keras.utils.set_random_seed(cfg.trainer.seed)
        gpu, nvml = GpuMemory(TensorFlowMemory()), NvmlMemory()
        sampler = MemorySampler(interval_s=cfg.tracking.memory_interval_s, probes=[nvml.sample])
        run_log.tags({"device": gpu.device, "rss_method": sampler.method})
        system = None
        if cfg.tracking.get("system_metrics", False):
            interval_s = float(cfg.tracking.get("system_metrics_interval_s", 10.0))
            system = SystemMetrics(run_log.uri, run_log.run_id, interval_s)
        return cls(sampler, gpu, nvml, ThroughputTracker(images_per_epoch=images_per_epoch), system=system)

    def start(self) -> None:
        """Take the baseline, reset the GPU peak and start sampling."""
        if self.system is not None:
            self.system.start()  # first: stop() stops it however far start() got
        self.baseline_bytes = self.sampler.start().sample()
        self.gpu.reset()

    def stop(self) -> dict[str, float]:
        """Stop sampling; the run's summary metrics (only those that were measured)."""
        try:
            peak = self.sampler.stop()
        finally:
            if self.system is not None:
                self.system.stop()
        if self.baseline_bytes is None:  # stopped before it started
            return {}
        summary = {"peak_rss_mb": peak / MB, "baseline_rss_mb": self.baseline_bytes / MB}
        if (gpu_peak := self.gpu.peak_mb()) is not None:
            summary["gpu_peak_mb"] = gpu_peak
        if (device_peak := self.nvml.peak_mb()) is not None:
            summary["gpu_device_peak_mb"] = device_peak  # NVML, all processes: the cross-check
        if (rate := self.throughput.steady_images_per_sec()) is not None:
            summary["images_per_sec"] = rate
        if self.throughput.time_to_first_batch_s is not None:
            summary["time_to_first_batch_s"] = self.throughput.time_to_first_batch_s
        return summary
