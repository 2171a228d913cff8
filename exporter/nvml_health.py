"""A GPU's health readings through ``Nvml.query``: ECC, retired pages, remapped rows, clocks event reasons.

Each field is read on its own, so a GPU that lacks one (no ECC on a consumer
card, page retirement before Ampere, row remapping only from Ampere) loses
only that field; ``None`` means unsupported and its series is left out.
"""

from __future__ import annotations

from typing import Any

# nvidia-smi -q's "Clocks Event Reasons" in order, as label values, with their NVML bits.
CLOCKS_EVENT_REASONS = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)
NVLINK_ALL_LINKS = 0xFFFFFFFF  # scopeId: the sum over every link


def decode_reasons(mask: int) -> dict[str, int]:
    """Each reason's name → 1 when its bit is set in a clocks event reasons mask, else 0."""
    return {name: int(bool(mask & bit)) for name, bit in CLOCKS_EVENT_REASONS}


def read_health(nvml: Any, h: Any) -> dict[str, Any]:
    """GpuDevice's health fields for handle ``h`` (None where the GPU cannot tell)."""
    lib, q = nvml.lib, nvml.query
    out: dict[str, Any] = {}
    for field, kind, counter in (
        ("ecc_sbe_vol", "CORRECTED", "VOLATILE"),
        ("ecc_dbe_vol", "UNCORRECTED", "VOLATILE"),
        ("ecc_sbe_agg", "CORRECTED", "AGGREGATE"),
        ("ecc_dbe_agg", "UNCORRECTED", "AGGREGATE"),
    ):
        error_type = getattr(lib, f"NVML_MEMORY_ERROR_TYPE_{kind}")
        out[field] = q("nvmlDeviceGetTotalEccErrors", h, error_type, getattr(lib, f"NVML_{counter}_ECC"))
    for field, cause in (
        ("retired_sbe", lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
        ("retired_dbe", lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
    ):
        pages = q("nvmlDeviceGetRetiredPages", h, cause)
        out[field] = len(pages) if pages is not None else None
    out["retired_pending"] = q("nvmlDeviceGetRetiredPagesPendingStatus", h)
    rows = q("nvmlDeviceGetRemappedRows", h)
    if rows is not None:
        (
            out["remapped_correctable"],
            out["remapped_uncorrectable"],
            out["remap_pending"],
            out["remap_failure"],
        ) = (int(x) for x in rows)
    # Renamed in NVML 12.2 ("throttle" → "event"); the bits are the same.
    reasons = q("nvmlDeviceGetCurrentClocksEventReasons", h)
    if reasons is None:
        reasons = q("nvmlDeviceGetCurrentClocksThrottleReasons", h)
    out["clocks_event_reasons"] = reasons
    limit_mw = q("nvmlDeviceGetPowerManagementLimit", h)
    out["power_limit_w"] = limit_mw / 1000.0 if limit_mw is not None else None
    out["nvlink_kib"], out["nvlink_at_us"] = _nvlink_kib(nvml, h)
    return out


def _nvlink_kib(nvml: Any, h: Any) -> tuple[int | None, int | None]:
    """Data sent + received over all NVLinks in KiB, and NVML's timestamp of the reading (µs)."""
    lib = nvml.lib
    fields = [
        (lib.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, NVLINK_ALL_LINKS),
        (lib.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, NVLINK_ALL_LINKS),
    ]
    values = nvml.query("nvmlDeviceGetFieldValues", h, fields)
    # A GPU without NVLink answers the call but fails each field.
    if values is None or any(v.nvmlReturn != lib.NVML_SUCCESS for v in values):
        return None, None
    return sum(int(v.value.ullVal) for v in values), max(int(v.timestamp) for v in values)
