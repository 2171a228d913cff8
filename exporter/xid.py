"""XID errors from NVML's event API, served as dcgm-exporter's DCGM_FI_DEV_XID_ERRORS and as counters.

An XID is an event, not a reading: a daemon thread owns one NVML event set
with every GPU registered for critical-XID events and waits on it; the
collector serves what it has seen since the exporter started. The thread
survives driver errors (the set is freed and rebuilt, with backoff, and the
failure is logged once); where no GPU can report XID events, the ``xid``
collector says so with ``fleet_exporter_collector_success{collector="xid"} 0``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client.core import Metric

from exporter.gpu import GpuCollector
from exporter.nvml import GpuIdentity, MigInstance, Nvml
from exporter.sampling import SampleFailed

log = logging.getLogger(__name__)

WHOLE_GPU = 0xFFFFFFFF  # gpuInstanceId of an event that is not one MIG instance's
XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError
# NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors), as dcgm-exporter's err_msg label.
XID_MESSAGES = {
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    32: "Invalid or corrupted push buffer stream",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "Double Bit ECC Error",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    68: "NVDEC0 Exception",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    109: "Context Switch Timeout Error",
    119: "GSP RPC Timeout",
    120: "GSP Error",
}


class XidsUnavailable(RuntimeError):
    """No XID events here (no GPU supports them, or the event thread is failing): the collector fails."""


class Seen(NamedTuple):
    """What one GPU (or MIG instance) has reported since the exporter started."""

    gpu: GpuIdentity
    gpu_instance_id: int | None  # None: the whole GPU
    last_xid: int
    last_at: float  # Unix time
    counts: dict[int, int]  # XID code -> events


class XidWatcher:
    """A daemon thread waiting on NVML's event set; keeps each GPU's last XID and counts by code."""

    def __init__(
        self,
        nvml: Nvml,
        clock: Callable[[], float] = time.time,
        wait_ms: int = 1000,
        retry_s: tuple[float, float] = (1.0, 30.0),
        rescan_s: float = 60.0,
    ):
        self._nvml = nvml
        self._clock = clock
        self._wait_ms = wait_ms
        self._retry_s = retry_s
        self._rescan_s = rescan_s  # no GPU, or none with events: look again this often (a driver loaded late)
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int | None], Seen] = {}
        self._problem: str | None = None  # why there are no events now; None while watching (or no GPU)
        self._failing = False  # failed since the last wait that worked (the thread's own flag)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> XidWatcher:
        """Start waiting for events on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="xid-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the thread (it notices within one wait) and free its event set."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def seen(self) -> list[Seen]:
        """Every GPU or instance that reported an XID.

        Raises:
            XidsUnavailable: events are unsupported here, or the thread is failing now.
        """
        with self._lock:
            if self._problem is not None:
                raise XidsUnavailable(self._problem)
            return list(self._seen.values())

    def _run(self) -> None:
        delay = self._retry_s[0]
        while not self._stop.is_set():
            try:
                pause = self._watch()
                delay = self._retry_s[0]
            except Exception as exc:  # noqa: BLE001 - a driver error or a lost GPU: rebuild the set, never die
                self._set_problem(f"NVML event thread failed ({exc}): restarting it with backoff", failed=True)
                pause, delay = delay, min(2 * delay, self._retry_s[1])
            self._stop.wait(pause)

    def _watch(self) -> float:
        """Register every GPU and record events until stopped; the seconds to wait before trying again."""
        gpus = self._nvml.handles()
        if not gpus:
            self._set_problem(None)  # no GPU here: nothing to report, nothing wrong
            return self._rescan_s
        lib = self._nvml.lib
        events = lib.nvmlEventSetCreate()
        try:
            registered = {}
            for gpu, h in gpus:
                mask = self._nvml.query("nvmlDeviceGetSupportedEventTypes", h, default=0) & XID_CRITICAL
                if mask and self._nvml.query("nvmlDeviceRegisterEvents", h, mask, events, default=False) is None:
                    registered[_address(h)] = gpu
            if not registered:
                self._set_problem("no GPU here reports XID events (NVML event API unsupported)")
                return self._rescan_s
            self._set_problem(None)
            while not self._stop.is_set():
                try:
                    data = lib.nvmlEventSetWait_v2(events, self._wait_ms)
                except lib.NVMLError as exc:
                    if exc.value != lib.NVML_ERROR_TIMEOUT:
                        raise
                    data = None  # nothing happened, or an interrupted wait
                if self._failing:  # a wait that worked ends a streak of failures
                    self._failing = False
                    log.info("XID events: watching again")
                if data is None:
                    continue
                gpu = registered.get(_address(data.device))
                if data.eventType & XID_CRITICAL and gpu is not None:
                    self._record(gpu, data.gpuInstanceId, int(data.eventData))
            return 0.0
        finally:
            try:
                lib.nvmlEventSetFree(events)
            except lib.NVMLError as exc:
                log.debug("nvmlEventSetFree: %s", exc)

    def _record(self, gpu: GpuIdentity, gpu_instance_id: int, xid: int) -> None:
        gi = None if gpu_instance_id == WHOLE_GPU else gpu_instance_id
        where = "" if gi is None else f" on GPU instance {gi}"
        log.warning("GPU %d (%s) XID %d%s: %s", gpu.index, gpu.uuid, xid, where, XID_MESSAGES.get(xid, "Unknown Error"))
        with self._lock:
            before = self._seen.get((gpu.uuid, gi))
            counts = dict(before.counts) if before else {}
            counts[xid] = counts.get(xid, 0) + 1
            self._seen[(gpu.uuid, gi)] = Seen(gpu, gi, xid, self._clock(), counts)

    def _set_problem(self, problem: str | None, failed: bool = False) -> None:
        """Record why there are no events; a failure is logged once, not at every retry.

        "Unsupported" is not logged here: the registry logs the xid collector's failure once.
        """
        with self._lock:
            self._problem = problem
        if failed and not self._failing:
            log.warning("%s", problem)
        self._failing = self._failing or failed


def _address(handle: Any) -> int:
    # An event names its GPU by a handle equal in address, not identity, to the one registered.
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0
    except (TypeError, ctypes.ArgumentError):  # not a ctypes pointer (a fake NVML's handle)
        return id(handle)


class XidCollector:
    """Serves the watcher's XIDs with the GPU collector's labels.

    ``curl -s localhost:9101/metrics | grep XID``::

        # TYPE DCGM_FI_DEV_XID_ERRORS gauge
        DCGM_FI_DEV_XID_ERRORS{…,err_code="79",err_msg="GPU has fallen off the bus",gpu="0",…} 79.0
        fleet_gpu_xid_errors_total{…,gpu="0",…,xid="79"} 1.0
    """

    def __init__(self, watcher: XidWatcher, gpus: GpuCollector):
        self._watcher = watcher
        self._gpus = gpus

    def start(self) -> XidCollector:
        """Start the watcher's thread."""
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop the watcher's thread."""
        self._watcher.stop()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """The last XID (0 before one), the XIDs counted by code, and when the last one came.

        Raises:
            XidsUnavailable: no XID events here; the GPU families still come from the ``gpu`` collector.
        """
        seen = {(s.gpu.uuid, s.gpu_instance_id): s for s in self._watcher.seen()}
        try:
            sample = self._gpus.sampler.latest()
        except SampleFailed:
            sample = None
        reading = sample.value if sample is not None else None
        driver = reading.driver_version if reading is not None else self._gpus.driver_version()
        units: dict[tuple[str, int | None], tuple[Any, MigInstance | None]] = {}
        for dev in reading.devices if reading is not None else ():
            for gi in dev.mig_instances if dev.mig_instances is not None else (None,):
                units[(dev.uuid, gi.gpu_instance_id if gi is not None else None)] = (dev, gi)
        last = Metric("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", "gauge")
        counts = Metric("fleet_gpu_xid_errors", "XID errors since the exporter started, by XID code.", "counter")
        when = Metric("fleet_gpu_xid_last_timestamp_seconds", "When the last XID error came, in Unix time.", "gauge")
        for key in sorted(units.keys() | seen.keys(), key=str):
            s = seen.get(key)
            dev, gi = units.get(key, (None, None))
            if dev is None:  # not in the reading (lost, or a whole-GPU XID on a MIG GPU): named as registered
                dev, gi = s.gpu, _instance(s.gpu_instance_id)
            labels = self._gpus.labels(driver, dev, gi)
            if s is None:
                last.add_sample(last.name, labels, 0)
                continue
            code = str(s.last_xid)
            err = {"err_code": code, "err_msg": XID_MESSAGES.get(s.last_xid, "Unknown Error")}
            last.add_sample(last.name, {**labels, **err}, s.last_xid)
            when.add_sample(when.name, labels, s.last_at)
            for xid, n in sorted(s.counts.items()):
                counts.add_sample("fleet_gpu_xid_errors_total", {**labels, "xid": str(xid)}, n)
        yield from (m for m in (last, counts, when) if m.samples)


def _instance(gpu_instance_id: int | None) -> MigInstance | None:
    return None if gpu_instance_id is None else MigInstance(gpu_instance_id, "", None, None, None, ())
