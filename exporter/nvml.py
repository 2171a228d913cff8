"""The one module that talks to NVML (nvidia-ml-py's ``pynvml``).

Modelled on nvitop's ``libnvml``: NVML is initialised lazily under a lock and
shut down at exit; every read goes through ``Nvml.query``, which turns "this
GPU or driver cannot answer that" into an absent value instead of an error.
A host without the NVIDIA driver or library simply has zero GPUs. Health
fields (nvml_health.py), GPM (gpm.py) and XID events (xid.py) go through
this door too: its ``query``, its handles and its initialised ``lib``.
"""

from __future__ import annotations

import atexit
import logging
import threading
from types import ModuleType
from typing import Any, NamedTuple

from exporter.gpm import Gpm
from exporter.nvml_health import read_health

log = logging.getLogger(__name__)

MIB = 1024 * 1024
NO_NVML_MESSAGE = "no NVIDIA driver/NVML found: GPU metrics disabled"


class ComputeProcess(NamedTuple):
    pid: int  # host pid: the driver is not pid-namespace aware
    used_gpu_memory_bytes: int


class MigInstance(NamedTuple):
    """One MIG GPU instance: memory, processes and GPM activity belong to it, not to the parent GPU."""

    gpu_instance_id: int  # NVML GI id, dcgm-exporter's GPU_I_ID
    profile: str  # e.g. "1g.10gb", dcgm-exporter's GPU_I_PROFILE
    fb_used_mib: int | None
    fb_free_mib: int | None
    fb_reserved_mib: int | None
    processes: tuple[ComputeProcess, ...]
    # Ratios 0-1 from GPM between this reading and the previous (Hopper and newer).
    gr_engine_active: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None


class GpuIdentity(NamedTuple):
    """What names a GPU in its series' labels (a GpuDevice has the same fields)."""

    index: int
    uuid: str
    pci_bus_id: str
    name: str


class GpuDevice(NamedTuple):
    """One physical GPU as read at one moment; None means the GPU or driver does not support it."""

    index: int  # NVML index, dcgm-exporter's gpu label
    uuid: str
    pci_bus_id: str
    name: str
    gpu_util_pct: int | None
    mem_copy_util_pct: int | None
    enc_util_pct: int | None
    dec_util_pct: int | None
    fb_used_mib: int | None  # memory v2: allocated, excluding driver-reserved memory
    fb_free_mib: int | None
    fb_reserved_mib: int | None  # None where only memory v1 exists
    temp_c: int | None
    power_w: float | None
    energy_mj: int | None  # since driver load; monotonic
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    pcie_replay: int | None  # monotonic
    processes: tuple[ComputeProcess, ...]  # empty for a MIG GPU: see mig_instances
    mig_instances: tuple[MigInstance, ...] | None  # None unless MIG mode is on
    # Ratios 0-1 from GPM between this reading and the previous (Hopper and newer; per instance on MIG):
    gr_engine_active: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    # Health (nvml_health.py); counters are monotonic until a driver reload (volatile) or forever (aggregate).
    ecc_sbe_vol: int | None = None
    ecc_dbe_vol: int | None = None
    ecc_sbe_agg: int | None = None
    ecc_dbe_agg: int | None = None
    retired_sbe: int | None = None  # pages retired (before Ampere)
    retired_dbe: int | None = None
    retired_pending: int | None = None  # 1: a retirement waits for a reset
    remapped_correctable: int | None = None  # rows remapped (Ampere and newer)
    remapped_uncorrectable: int | None = None
    remap_pending: int | None = None  # 1: a remap waits for a reset
    remap_failure: int | None = None  # 1: a remap failed
    clocks_event_reasons: int | None = None  # bitmask of nvmlClocksEventReason*
    power_limit_w: float | None = None
    nvlink_kib: int | None = None  # sent + received over all links, since driver load
    nvlink_at_us: int | None = None  # when NVML read nvlink_kib
    nvlink_mib_s: float | None = None  # rate between two readings, filled in by the collector


class Nvml:
    """Lazily initialised NVML access; ``lib`` is the ``pynvml`` module, or a fake in tests."""

    def __init__(self, lib: ModuleType | Any | None = None):
        self._lib = lib
        self._lock = threading.Lock()
        self._ready = False
        self._atexit_registered = False
        self._missing_logged = False
        self._driver_version = ""
        self._unusable_logged: set[str] = set()
        self._lost: set[int] = set()
        self._gpm = Gpm(self)

    @property
    def lib(self) -> Any:
        """The pynvml module (or fake) in use, for its constants; None before the first read."""
        return self._lib

    def driver_version(self) -> str:
        """The driver version read at initialisation ("" before it, or without NVML)."""
        return self._driver_version

    def devices(self) -> list[GpuDevice]:
        """Read every GPU once; [] without a driver, and a lost GPU is left out.

        Raises:
            NVMLError: NVML is installed but failed otherwise (e.g. a driver/library
                version mismatch), so the caller can report the source as failing.
        """
        with self._lock:
            if not self._init():
                return []
            lib = self._lib
            found = []
            for index in range(lib.nvmlDeviceGetCount()):
                try:
                    found.append(self._device(index))
                except lib.NVMLError as exc:
                    if exc.value not in (lib.NVML_ERROR_GPU_IS_LOST, lib.NVML_ERROR_RESET_REQUIRED):
                        raise
                    if index not in self._lost:
                        log.error("GPU %d is lost (%s): leaving it out until it answers", index, exc)
                        self._lost.add(index)
                    continue
                if index in self._lost:
                    log.info("GPU %d answers again", index)
                    self._lost.discard(index)
            return found

    def handles(self) -> list[tuple[GpuIdentity, Any]]:
        """Every GPU's identity and NVML handle, read now; [] without a driver, a lost GPU left out.

        Raises:
            NVMLError: NVML is installed but failed otherwise.
        """
        with self._lock:
            if not self._init():
                return []
            lib, found = self._lib, []
            for index in range(lib.nvmlDeviceGetCount()):
                try:
                    h = lib.nvmlDeviceGetHandleByIndex(index)
                    pci = self.query("nvmlDeviceGetPciInfo", h)
                    uuid, name = _text(lib.nvmlDeviceGetUUID(h)), _text(lib.nvmlDeviceGetName(h))
                except lib.NVMLError as exc:
                    if exc.value not in (lib.NVML_ERROR_GPU_IS_LOST, lib.NVML_ERROR_RESET_REQUIRED):
                        raise
                    continue
                found.append((GpuIdentity(index, uuid, _text(pci.busId) if pci is not None else "", name), h))
            return found

    def query(self, func: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        """Call ``pynvml.<func>``; return ``default`` where the GPU, driver or binding lacks it."""
        lib = self._lib
        call = getattr(lib, func, None)
        if call is None:  # a binding older than the call
            self._log_unusable(func, "not in this nvidia-ml-py")
            return default
        try:
            return call(*args, **kwargs)
        except lib.NVMLError as exc:
            if exc.value == lib.NVML_ERROR_NOT_FOUND:  # "no such thing now": an empty MIG slot, no samples
                return default
            if exc.value not in (
                lib.NVML_ERROR_NOT_SUPPORTED,  # this GPU lacks the field
                lib.NVML_ERROR_FUNCTION_NOT_FOUND,  # a driver older than the call
                lib.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,  # a driver older than the struct
                lib.NVML_ERROR_NO_PERMISSION,
            ):
                raise
            self._log_unusable(func, str(exc))
        return default

    def shutdown(self) -> None:
        """Release NVML (registered with atexit once initialised)."""
        with self._lock:
            if self._ready:
                self._ready = False
                self._gpm.forget_all()
                try:
                    self._lib.nvmlShutdown()
                except self._lib.NVMLError as exc:
                    log.debug("nvmlShutdown: %s", exc)

    def _init(self) -> bool:
        # Retried at every sample: a driver loaded after the exporter started is picked up.
        if self._ready:
            return True
        if self._lib is None:
            try:
                import pynvml
            except ImportError as exc:
                self._log_missing(f"cannot import pynvml: {exc}")
                return False
            self._lib = pynvml
        lib = self._lib
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            if exc.value not in (
                lib.NVML_ERROR_LIBRARY_NOT_FOUND,
                lib.NVML_ERROR_DRIVER_NOT_LOADED,
            ):
                raise
            self._log_missing(str(exc))
            return False
        self._ready = True
        if not self._atexit_registered:
            atexit.register(self.shutdown)
            self._atexit_registered = True
        version = self.query("nvmlSystemGetDriverVersion", default="")
        self._driver_version = _text(version)
        log.info("NVML initialised, driver %s", self._driver_version or "unknown")
        return True

    def _device(self, index: int) -> GpuDevice:
        lib, q = self._lib, self.query
        h = lib.nvmlDeviceGetHandleByIndex(index)
        pci = q("nvmlDeviceGetPciInfo", h)
        mig_mode = q("nvmlDeviceGetMigMode", h)
        mig = mig_mode is not None and mig_mode[0] == lib.NVML_DEVICE_MIG_ENABLE
        # On a MIG GPU utilization, encoder/decoder, memory and processes exist
        # only per instance (dcgm-exporter omits the utilizations there).
        util = None if mig else q("nvmlDeviceGetUtilizationRates", h)
        enc = None if mig else q("nvmlDeviceGetEncoderUtilization", h)
        dec = None if mig else q("nvmlDeviceGetDecoderUtilization", h)
        used, free, reserved = (None, None, None) if mig else self._memory_mib(h)
        power_mw = q("nvmlDeviceGetPowerUsage", h)
        uuid = _text(lib.nvmlDeviceGetUUID(h))
        # On a MIG GPU, GPM measures each instance (nvmlGpmMigSampleGet), not the whole GPU.
        gpm = {} if mig else self._gpm.ratios(uuid, h, lambda sample: lib.nvmlGpmSampleGet(h, sample))
        return GpuDevice(
            index=index,
            uuid=uuid,
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            name=_text(lib.nvmlDeviceGetName(h)),
            gpu_util_pct=util.gpu if util is not None else None,
            mem_copy_util_pct=util.memory if util is not None else None,
            enc_util_pct=enc[0] if enc is not None else None,
            dec_util_pct=dec[0] if dec is not None else None,
            fb_used_mib=used,
            fb_free_mib=free,
            fb_reserved_mib=reserved,
            temp_c=q("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU),
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            energy_mj=q("nvmlDeviceGetTotalEnergyConsumption", h),
            sm_clock_mhz=q("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_SM),
            mem_clock_mhz=q("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_MEM),
            pcie_replay=q("nvmlDeviceGetPcieReplayCounter", h),
            processes=() if mig else self._processes(h),
            mig_instances=self._mig_instances(uuid, h) if mig else None,
            **gpm,
            **read_health(self, h),
        )

    def _mig_instances(self, uuid: str, h: Any) -> tuple[MigInstance, ...]:
        q, lib = self.query, self._lib
        by_gi: dict[int, MigInstance] = {}
        # Indices are sparse (profiles occupy several slots): walk them all.
        for i in range(q("nvmlDeviceGetMaxMigDeviceCount", h, default=0)):
            mig = q("nvmlDeviceGetMigDeviceHandleByIndex", h, i)
            if mig is None:
                continue
            gi_id = q("nvmlDeviceGetGpuInstanceId", mig)
            if gi_id is None:
                continue
            procs = self._processes(mig)
            if gi_id in by_gi:  # another compute instance of the same GI: same memory
                seen = by_gi[gi_id]
                extra = tuple(p for p in procs if p not in seen.processes)
                by_gi[gi_id] = seen._replace(processes=seen.processes + extra)
                continue
            name = _text(q("nvmlDeviceGetName", mig, default=""))
            used, free, reserved = self._memory_mib(mig)
            gpm = self._gpm.ratios(
                f"{uuid}/{gi_id}", h, lambda sample, gi=gi_id: lib.nvmlGpmMigSampleGet(h, gi, sample)
            )
            by_gi[gi_id] = MigInstance(gi_id, name.rpartition(" MIG ")[2], used, free, reserved, procs, **gpm)
        # A destroyed instance's samples go with it: a new instance may reuse its id.
        self._gpm.keep_instances(uuid, {f"{uuid}/{gi}" for gi in by_gi})
        return tuple(by_gi[k] for k in sorted(by_gi))

    def _memory_mib(self, h: Any) -> tuple[int | None, int | None, int | None]:
        # v1 "used" includes driver-reserved memory; v2 is what nvidia-smi and DCGM report.
        v2 = getattr(self._lib, "nvmlMemory_v2", None)
        mem = None if v2 is None else self.query("nvmlDeviceGetMemoryInfo", h, version=v2)
        if mem is not None:
            return mem.used // MIB, mem.free // MIB, mem.reserved // MIB
        mem = self.query("nvmlDeviceGetMemoryInfo", h)
        if mem is None:
            return None, None, None
        return mem.used // MIB, mem.free // MIB, None

    def _processes(self, h: Any) -> tuple[ComputeProcess, ...]:
        running = self.query("nvmlDeviceGetComputeRunningProcesses", h, default=[])
        # usedGpuMemory is None where NVML cannot tell (WDDM, unprivileged MIG).
        return tuple(ComputeProcess(p.pid, p.usedGpuMemory) for p in running if p.usedGpuMemory is not None)

    def _log_missing(self, why: str) -> None:
        if not self._missing_logged:
            log.warning("%s (%s)", NO_NVML_MESSAGE, why)
            self._missing_logged = True

    def _log_unusable(self, func: str, why: str) -> None:
        if func not in self._unusable_logged:
            log.info("NVML %s unusable here (%s): its metrics are left out", func, why)
            self._unusable_logged.add(func)


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py versions return bytes for NVML strings.
    return value.decode() if isinstance(value, bytes) else value
