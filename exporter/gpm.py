"""NVML GPM (Hopper and newer): DCGM's PROF ratios per GPU or MIG instance, between consecutive readings.

Each GPU or instance keeps two sample buffers between readings: the one taken
at the previous reading and the one the next reading fills; each reading is
measured against the previous, so a value is the average over the sampling
interval, as DCGM's is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# GpuDevice/MigInstance field -> NVML GPM metric; DCGM reports these percentages as ratios.
GPM_METRICS = {
    "gr_engine_active": "NVML_GPM_METRIC_GRAPHICS_UTIL",
    "tensor_active": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "dram_active": "NVML_GPM_METRIC_DRAM_BW_UTIL",
}


class Gpm:
    """GPM sample buffers by key (a GPU's UUID, or "UUID/GI id"), read through ``nvml`` (an ``Nvml``)."""

    def __init__(self, nvml: Any):
        self._nvml = nvml
        self._samples: dict[str, list[Any]] = {}  # [previous reading, next one's buffer]
        self._primed: set[str] = set()  # the previous buffer holds a reading
        self._unsupported: set[str] = set()  # GPU UUIDs without GPM
        self._failed: set[str] = set()  # failure logged

    def ratios(self, key: str, h: Any, sample_get: Callable[[Any], Any]) -> dict[str, float]:
        """DCGM's PROF ratios over the interval since ``key``'s previous reading; {} where there are none.

        ``key`` is a GPU's UUID, or "UUID/GI id" for a MIG instance; ``h`` is the
        (parent) GPU, asked whether it has GPM; ``sample_get`` fills a sample.
        """
        lib = self._nvml.lib
        uuid = key.partition("/")[0]
        if uuid in self._unsupported:
            return {}
        samples = self._samples.get(key)
        try:
            if samples is None:
                support = self._nvml.query("nvmlGpmQueryDeviceSupport", h)  # None for a driver without GPM
                if support is None or not support.isSupportedDevice:
                    self._unsupported.add(uuid)  # before Hopper DCGM uses its profiling module; we have none
                    return {}
                samples = self._samples[key] = []
            while len(samples) < 2:  # kept as soon as allocated, so that shutdown frees each one
                samples.append(lib.nvmlGpmSampleAlloc())
            previous, current = samples
            sample_get(current)
            samples.reverse()  # this reading is the next one's previous; its old buffer is reused
            if key not in self._primed:  # one sample is not an interval yet
                self._primed.add(key)
                return {}
            request = lib.c_nvmlGpmMetricsGet_t()
            request.version = lib.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(GPM_METRICS)
            request.sample1, request.sample2 = previous, current
            for i, metric in enumerate(GPM_METRICS.values()):
                request.metrics[i].metricId = getattr(lib, metric)
            lib.nvmlGpmMetricsGet(request)
        except lib.NVMLError as exc:
            if exc.value in (lib.NVML_ERROR_GPU_IS_LOST, lib.NVML_ERROR_RESET_REQUIRED):
                self._primed -= {k for k in self._primed if k.startswith(uuid)}  # a reset restarts them
                raise
            # After a failed sample the next interval is just longer: still a true average.
            if key not in self._failed:
                log.warning("GPU %s: NVML GPM failed (%s): its DCGM_FI_PROF_* series are left out", key, exc)
                self._failed.add(key)
            return {}
        return {
            field: request.metrics[i].value / 100.0
            for i, field in enumerate(GPM_METRICS)
            if request.metrics[i].nvmlReturn == lib.NVML_SUCCESS
        }

    def keep_instances(self, uuid: str, keys: set[str]) -> None:
        """Free the samples of GPU ``uuid``'s instances not in ``keys`` (destroyed: a new one may reuse the id)."""
        self._forget({k for k in self._samples if k.startswith(f"{uuid}/")} - keys)

    def forget_all(self) -> None:
        """Free every sample (at NVML shutdown)."""
        self._forget(set(self._samples))

    def _forget(self, keys: set[str]) -> None:
        lib = self._nvml.lib
        for key in keys:
            for sample in self._samples.pop(key, ()):
                try:
                    lib.nvmlGpmSampleFree(sample)
                except lib.NVMLError as exc:
                    log.debug("nvmlGpmSampleFree: %s", exc)
            self._primed.discard(key)
