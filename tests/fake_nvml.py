"""A fake pynvml module: NVML answers as read on the lent H100, for machines without a GPU."""

from __future__ import annotations

import queue
from types import SimpleNamespace as NS
from typing import Any

import pynvml

MIB = 1024 * 1024
TOTAL = 85520809984  # an H100 80GB HBM3, h100-nvml-probe.json
UUID0 = "GPU-3f32f8f0-621a-c31a-dcd0-51d9cd005dad"
UUID1 = "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
TAKEN_AT = 1_790_000_000.0


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # returns the matching subclass, e.g. NVMLError_NotSupported


def memory(used: int, reserved: int) -> Any:
    """Answers v2 with reserved apart, and v1 with reserved counted as used (as drivers do)."""
    v2 = NS(total=TOTAL, reserved=reserved, used=used, free=TOTAL - used - reserved)
    v1 = NS(total=TOTAL, used=used + reserved, free=TOTAL - used - reserved)
    return lambda version=None: v2 if version == pynvml.nvmlMemory_v2 else v1


def nvlink(kib_per_s: int) -> Any:
    """nvmlDeviceGetFieldValues for NVLink RX/TX: each call one second and ``kib_per_s`` KiB (both ways) later."""
    calls = [0]

    def field_values(fields: list) -> list:
        calls[0] += 1
        half = calls[0] * kib_per_s // 2
        return [
            NS(fieldId=f, scopeId=scope, timestamp=calls[0] * 1_000_000, nvmlReturn=pynvml.NVML_SUCCESS,
               value=NS(ullVal=half))
            for f, scope in fields
        ]  # fmt: skip

    return field_values


def h100(uuid: str = UUID0, pci: str = "00000000:00:06.0", **answers: Any) -> dict[str, Any]:
    """An H100 under load as read on the lent machine (facts/h100-nvml.md); ``answers`` override."""
    clocks = {pynvml.NVML_CLOCK_SM: 1305, pynvml.NVML_CLOCK_MEM: 2619}
    return {
        "nvmlDeviceGetUUID": uuid,
        "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetPciInfo": NS(busId=pci),
        "nvmlDeviceGetMigMode": [0, 0],
        "nvmlDeviceGetUtilizationRates": NS(gpu=100, memory=30),
        "nvmlDeviceGetEncoderUtilization": [0, 100000],
        "nvmlDeviceGetDecoderUtilization": [0, 100000],
        "nvmlDeviceGetMemoryInfo": memory(13171 * MIB + 12345, 479 * MIB + 1000),
        "nvmlDeviceGetTemperature": {pynvml.NVML_TEMPERATURE_GPU: 69}.__getitem__,
        "nvmlDeviceGetPowerUsage": 696508,  # mW
        "nvmlDeviceGetTotalEnergyConsumption": 16370176,  # mJ
        "nvmlDeviceGetClockInfo": clocks.__getitem__,
        "nvmlDeviceGetPcieReplayCounter": 0,
        "nvmlDeviceGetFanSpeed": err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        # Health: ECC on and clean, rows remapped (Hopper) rather than pages retired, power capped under load.
        "nvmlDeviceGetTotalEccErrors": lambda error_type, counter: 0,
        "nvmlDeviceGetRetiredPages": err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        "nvmlDeviceGetRetiredPagesPendingStatus": err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        "nvmlDeviceGetRemappedRows": (0, 0, 0, 0),
        "nvmlDeviceGetCurrentClocksEventReasons": pynvml.nvmlClocksEventReasonSwPowerCap,
        "nvmlDeviceGetPowerManagementLimit": 700000,  # mW
        "nvmlDeviceGetFieldValues": nvlink(0),
        "nvmlDeviceGetSupportedEventTypes": 0x3F,  # ECC, PState, XID, clocks
        "nvmlDeviceRegisterEvents": None,
        # GPM (Hopper): percentages by metric id between two samples.
        "nvmlGpmQueryDeviceSupport": NS(isSupportedDevice=1),
        "gpm": {
            pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 96.0,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 41.5,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 30.0,
        },
        "nvmlDeviceGetComputeRunningProcesses": [
            NS(pid=473, usedGpuMemory=13801357312),
            NS(pid=474, usedGpuMemory=None),  # NVML_VALUE_NOT_AVAILABLE
        ],
        **answers,
    }


class FakePynvml:
    """The pynvml functions nvml.py calls; a device is a dict of answers (value, callable or error).

    A device function with no answer raises NotSupported, like a field the GPU
    lacks; constants and error classes are the real pynvml's.
    """

    def __init__(self, devices: list[dict[str, Any]], init_error: int | None = None):
        self.devices = devices
        self.init_error = init_error
        self.shutdowns = 0
        self.gpm_allocated = self.gpm_freed = self.gpm_samples = 0
        self.events: queue.Queue = queue.Queue()  # what nvmlEventSetWait_v2 hands out: event data or an error
        self.event_sets_created = self.event_sets_freed = 0
        self._mig_samples: dict[tuple[int, int], dict[str, Any]] = {}

    def xid(self, index: int, code: int, gpu_instance_id: int = 0xFFFFFFFF) -> None:
        """The driver reports XID ``code`` on GPU ``index`` (one MIG instance of it, or the whole GPU)."""
        event = NS(device=self.devices[index], eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=code,
                   gpuInstanceId=gpu_instance_id, computeInstanceId=gpu_instance_id)  # fmt: skip
        self.events.put(event)

    def nvmlEventSetCreate(self) -> Any:
        self.event_sets_created += 1
        return NS(number=self.event_sets_created)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        try:
            answer = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise err(pynvml.NVML_ERROR_TIMEOUT) from None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self.event_sets_freed += 1

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise err(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    class c_nvmlGpmMetricsGet_t:  # pynvml's name; the real struct takes only real samples
        def __init__(self):
            self.metrics = [NS(metricId=0, nvmlReturn=-1, value=0.0) for _ in range(8)]

    def nvmlGpmSampleAlloc(self) -> Any:
        self.gpm_allocated += 1
        return NS(handle=None, taken=0)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.gpm_freed += 1

    def nvmlGpmSampleGet(self, handle: dict[str, Any], sample: Any) -> None:
        self._answer(handle, "nvmlGpmSampleGet", default=None)
        self.gpm_samples += 1
        sample.handle, sample.taken = handle, self.gpm_samples

    def nvmlGpmMigSampleGet(self, handle: dict[str, Any], gpu_instance_id: int, sample: Any) -> None:
        """A sample of one MIG instance: its percentages are the device's "gpm_mig"[GI id] answers."""
        self._answer(handle, "nvmlGpmMigSampleGet", gpu_instance_id, default=None)
        instances = self._answer(handle, "gpm_mig")  # NotSupported for a GPU without MIG
        if gpu_instance_id not in instances:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        self.gpm_samples += 1
        key = (id(handle), gpu_instance_id)  # one stand-in handle per instance, so samples of it compare equal
        stand_in = self._mig_samples.setdefault(key, {"gpm": instances[gpu_instance_id]})
        sample.handle, sample.taken = stand_in, self.gpm_samples

    def nvmlGpmQueryDeviceSupport(self, handle: dict[str, Any]) -> Any:
        return self._answer(handle, "nvmlGpmQueryDeviceSupport")

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        """Percentages from the device's "gpm" answers, over two distinct samples taken in order."""
        first, second = request.sample1, request.sample2
        ordered = first.handle is second.handle and 0 < first.taken < second.taken
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION or not ordered:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        values = self._answer(second.handle, "gpm")
        for m in request.metrics[: request.numMetrics]:
            m.value, m.nvmlReturn = values[m.metricId], pynvml.NVML_SUCCESS
        return request

    def _answer(self, handle: dict[str, Any], name: str, *args: Any, default: Any = ..., **kwargs: Any) -> Any:
        if handle.get("lost"):
            raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
        missing = err(pynvml.NVML_ERROR_NOT_SUPPORTED) if default is ... else default
        answer = handle.get(name, missing)
        if callable(answer) and not isinstance(answer, Exception):
            answer = answer(*args, **kwargs)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("nvmlDevice"):
            return getattr(pynvml, name)
        return lambda handle, *args, **kwargs: self._answer(handle, name, *args, **kwargs)


# An H100 in MIG mode with two GPU instances: memory per instance, utilisation unsupported.
GI_MIB = {2: (40960, 20000, 100), 9: (10240, 512, 0)}  # GPU instance id: (total, used, reserved) in MiB


def _memory(total: int, used: int, reserved: int):
    v2 = NS(total=total, used=used, reserved=reserved, free=total - used - reserved)
    return lambda version=None: v2 if version == pynvml.nvmlMemory_v2 else NS(total=total, used=used + reserved)


def mig_h100(pid: int, **overrides) -> dict:
    """The MIG H100 as NVML answers it; ``pid`` runs on its first GPU instance; ``overrides`` as for ``h100``."""

    def instance(gi: int, procs: list) -> dict:
        total, used, reserved = GI_MIB[gi]
        return {
            "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            "nvmlDeviceGetGpuInstanceId": gi,
            "nvmlDeviceGetMemoryInfo": _memory(total * MIB, used * MIB, reserved * MIB),
            "nvmlDeviceGetComputeRunningProcesses": procs,
        }

    slots = {0: instance(2, [NS(pid=pid, usedGpuMemory=700 * MIB)]), 3: instance(9, [])}

    def by_index(i: int):
        return slots.get(i, pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND))

    return h100(
        UUID1,
        "00000000:00:07.0",
        nvmlDeviceGetMigMode=[1, 1],
        nvmlDeviceGetComputeRunningProcesses=[],  # they are listed per GPU instance
        nvmlDeviceGetMaxMigDeviceCount=7,
        nvmlDeviceGetMigDeviceHandleByIndex=by_index,
        nvmlDeviceGetUtilizationRates=pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
        **overrides,
    )
