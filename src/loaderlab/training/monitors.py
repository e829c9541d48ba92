"""Everything that measures one job: memory sampler, GPU peak, throughput, created and started apart."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from loaderlab.monitor import GpuMemory, MemorySampler, NvmlMemory, TensorFlowMemory, ThroughputTracker
from loaderlab.run_log import RunLog
from loaderlab.utils.system import MB


@dataclass
class Monitors:
    """Everything that measures the run: memory sampler, GPU peak, throughput."""

    sampler: MemorySampler
    gpu: GpuMemory
    nvml: NvmlMemory
    throughput: ThroughputTracker
    baseline_bytes: int | None = None

    @classmethod
    def create(cls, cfg: DictConfig, run_log: RunLog, images_per_epoch: int) -> Monitors:
        """Seed Keras and tag how memory is measured; nothing runs until start()."""
        import keras

        keras.utils.set_random_seed(cfg.trainer.seed)
        gpu, nvml = GpuMemory(TensorFlowMemory()), NvmlMemory()
        sampler = MemorySampler(interval_s=cfg.tracking.memory_interval_s, probes=[nvml.sample])
        run_log.tags({"device": gpu.device, "rss_method": sampler.method})
        return cls(sampler, gpu, nvml, ThroughputTracker(images_per_epoch=images_per_epoch))

    def start(self) -> None:
        """Take the baseline, reset the GPU peak and start sampling."""
        self.baseline_bytes = self.sampler.start().sample()
        self.gpu.reset()

    def stop(self) -> dict[str, float]:
        """Stop sampling; the run's summary metrics (only those that were measured)."""
        peak = self.sampler.stop()
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
