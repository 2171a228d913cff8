"""GPU metrics in dcgm-exporter's names, types, labels and units, read through NVML.

Dashboards and alerts written for dcgm-exporter's default counters work
unchanged on these series. NVML is read off the scrape path by a `Sampler`
(a full read takes 6-8 ms per H100, single calls up to 75 ms under load).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import chain
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.nvml import GpuDevice, MigInstance, Nvml
from exporter.nvml_health import decode_reasons
from exporter.processes import GpuProcess
from exporter.sampling import SampledCollector, SampleFailed, Sampler

# (name, type, help, field) with dcgm-exporter's help text from its
# default-counters.csv; the field is read from the MIG instance where it has
# one (memory), otherwise from the GPU (device-wide readings are repeated on
# each instance, as dcgm-exporter does).
FIELDS = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "gpu_util_pct"),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "mem_copy_util_pct"),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", "enc_util_pct"),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", "dec_util_pct"),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "fb_free_mib"),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "fb_used_mib"),
    (
        "DCGM_FI_DEV_FB_RESERVED",
        "gauge",
        "Framebuffer memory reserved (in MiB).",
        "fb_reserved_mib",
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "temp_c"),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "power_w"),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        "energy_mj",
    ),
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "sm_clock_mhz"),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", "mem_clock_mhz"),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", "pcie_replay"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.", "gr_engine_active"),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        "tensor_active",
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        "dram_active",
    ),
    # Health: DCGM's field names and its help texts; counters of errors since driver load (VOL) or ever (AGG).
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.", "ecc_sbe_vol"),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.", "ecc_dbe_vol"),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter", "Total number of single-bit persistent ECC errors.", "ecc_sbe_agg"),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter", "Total number of double-bit persistent ECC errors.", "ecc_dbe_agg"),
    ("DCGM_FI_DEV_RETIRED_SBE", "counter", "Total number of retired pages due to single-bit errors.", "retired_sbe"),
    ("DCGM_FI_DEV_RETIRED_DBE", "counter", "Total number of retired pages due to double-bit errors.", "retired_dbe"),
    ("DCGM_FI_DEV_RETIRED_PENDING", "counter", "Total number of pages pending retirement.", "retired_pending"),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
        "remapped_uncorrectable",
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
        "remapped_correctable",
    ),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed", "remap_failure"),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether remapping of rows is pending", "remap_pending"),
    (
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "gauge",
        "Current clock event reasons (bitmask of DCGM_CLOCKS_EVENT_REASON_*)",
        "clocks_event_reasons",
    ),
    # A rate in MiB/s despite its type, as DCGM computes it (0 at the first reading).
    (
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "counter",
        "Total number of NVLink bandwidth counters for all lanes.",
        "nvlink_mib_s",
    ),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W).", "power_limit_w"),
)
MIG_FIELDS = frozenset(MigInstance._fields)  # read per GPU instance on a MIG GPU
HOSTNAME_LABELS = ("Hostname", "hostname")


class GpuReading(NamedTuple):
    driver_version: str
    devices: list[GpuDevice]


class GpuCollector(SampledCollector):
    """Serves the newest NVML reading as dcgm-exporter-compatible DCGM_FI_* families.

    Sample output (check by hand with ``curl -s localhost:9101/metrics | grep DCGM_``)::

        # HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
        # TYPE DCGM_FI_DEV_POWER_USAGE gauge
        DCGM_FI_DEV_POWER_USAGE{DCGM_FI_DRIVER_VERSION="580.159.04",…,gpu="0",…} 696.508

    A MIG GPU has no GPU-level series: one per GPU instance, with GPU_I_PROFILE
    and GPU_I_ID labels and without the utilization families. Counters keep
    dcgm-exporter's exact sample names (no ``_total``).
    """

    def __init__(
        self,
        nvml: Nvml,
        hostname: str,
        hostname_label: str = "Hostname",
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        if hostname_label not in HOSTNAME_LABELS:
            raise ValueError(f"hostname_label must be one of {HOSTNAME_LABELS}, not {hostname_label!r}")
        self._nvml = nvml
        self._hostname = hostname
        self._hostname_label = hostname_label
        self._previous: dict[str, GpuDevice] = {}  # the last reading by UUID, for NVLink's rate
        self._sampler: Sampler[GpuReading] = Sampler("gpu", self._read, interval, clock=clock)

    def collect(self) -> Iterator[Metric]:
        """Yield the families of the newest reading; nothing before it or without GPUs.

        Raises:
            SampleFailed: the newest NVML read failed.
        """
        sample = self._sampler.latest()
        if sample is None or not sample.value.devices:
            return
        reading = sample.value
        series = [
            (self.labels(reading.driver_version, dev, gi), dev, gi)
            for dev in reading.devices
            for gi in (dev.mig_instances if dev.mig_instances is not None else (None,))
        ]
        for name, typ, doc, field in FIELDS:
            family = Metric(name, doc, typ)
            for labels, dev, gi in series:
                value = getattr(gi if field in MIG_FIELDS and gi is not None else dev, field)
                if value is not None:  # unsupported: no series rather than a fake 0
                    # add_sample, not CounterMetricFamily: that would append "_total".
                    family.add_sample(name, labels, value)
            if family.samples:
                yield family
        reasons = Metric(
            "fleet_gpu_clocks_event_reason",
            "1 while the GPU's clocks are held down for this reason (DCGM_FI_DEV_CLOCKS_EVENT_REASONS decoded).",
            "gauge",
        )
        for labels, dev, _ in series:
            if dev.clocks_event_reasons is not None:
                for reason, active in decode_reasons(dev.clocks_event_reasons).items():
                    reasons.add_sample(reasons.name, {**labels, "reason": reason}, active)
        if reasons.samples:
            yield reasons
        yield GaugeMetricFamily(
            "fleet_gpu_sample_timestamp_seconds",
            "When the GPU reading served was taken, in Unix time.",
            value=sample.taken_at,
        )
        yield GaugeMetricFamily("fleet_gpu_devices", "Number of GPUs NVML answered for.", value=len(reading.devices))

    def processes(self) -> list[GpuProcess]:
        """Compute processes and their GPU memory from the newest reading ([] if none or failed)."""
        try:
            sample = self._sampler.latest()
        except SampleFailed:
            return []
        if sample is None:
            return []
        found = []
        for dev in sample.value.devices:
            instances = dev.mig_instances or ()
            for p in chain(dev.processes, *(gi.processes for gi in instances)):
                found.append(GpuProcess(p.pid, str(dev.index), dev.uuid, p.used_gpu_memory_bytes))
        return found

    def driver_version(self) -> str:
        """The NVIDIA driver's version ("" before NVML answered)."""
        return self._nvml.driver_version()

    def labels(self, driver: str, dev: GpuDevice, gi: MigInstance | None) -> dict[str, str]:
        """dcgm-exporter's labels of a GPU's series, or of one of its MIG instances'."""
        # dcgm-exporter's order; the text exposition sorts them anyway.
        labels = {
            "gpu": str(dev.index),
            "UUID": dev.uuid,
            "pci_bus_id": dev.pci_bus_id,
            "device": f"nvidia{dev.index}",
            "modelName": dev.name,
        }
        if gi is not None:
            labels["GPU_I_PROFILE"] = gi.profile
            labels["GPU_I_ID"] = str(gi.gpu_instance_id)
        labels[self._hostname_label] = self._hostname
        labels["DCGM_FI_DRIVER_VERSION"] = driver
        return labels

    def _read(self) -> GpuReading:
        devices = self._nvml.devices()  # initialises NVML, which reads the driver version
        self._previous, previous = {d.uuid: d for d in devices}, self._previous
        return GpuReading(self._nvml.driver_version(), [_with_nvlink_rate(d, previous.get(d.uuid)) for d in devices])


def _with_nvlink_rate(dev: GpuDevice, before: GpuDevice | None) -> GpuDevice:
    """DCGM's NVLINK_BANDWIDTH_TOTAL: (Δ KiB sent + received) / Δ seconds / 1000, and 0 at the first reading."""
    if dev.nvlink_kib is None:
        return dev
    if before is None or before.nvlink_kib is None or not dev.nvlink_at_us or not before.nvlink_at_us:
        return dev._replace(nvlink_mib_s=0.0)
    elapsed_s = (dev.nvlink_at_us - before.nvlink_at_us) / 1e6
    if elapsed_s <= 0 or dev.nvlink_kib < before.nvlink_kib:  # same reading again, or a driver reload
        return dev._replace(nvlink_mib_s=0.0)
    return dev._replace(nvlink_mib_s=(dev.nvlink_kib - before.nvlink_kib) / elapsed_s / 1000)
