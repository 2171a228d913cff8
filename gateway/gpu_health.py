"""GPU health in a host's status (§8.2): which recorded GPU series make a host crit or warn, and why.

Only broken or degraded hardware is judged: an uncorrectable ECC error, a
failed row remap or a fatal XID is crit (the GPU needs a reset or service);
thermal or hardware slowdown and a remap waiting for a reset are warn. A
busy GPU is not: utilisation is shown, never judged.
"""

from __future__ import annotations

from collections.abc import Callable

# XIDs after which the GPU needs a reset or service (NVIDIA's XID catalog): double-bit ECC,
# fallen off the bus, contained and uncontained ECC errors.
FATAL_XIDS = (48, 79, 94, 95)
WARN_THROTTLE = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown")


def problems_query(sel: Callable[..., str]) -> str:
    """One PromQL query for every GPU problem of the hosts ``sel(record, **matchers)`` selects."""
    terms = [
        f"{sel('fleet:gpu_ecc_uncorrectable')} > 0",
        f"{sel('fleet:gpu_row_remap_failed')} > 0",
        *(f"{sel('fleet:gpu_xid_last')} == {xid}" for xid in FATAL_XIDS),
        f"{sel('fleet:gpu_remapped_rows_pending')} > 0",
        *(f"{sel('fleet:gpu_throttled', reason=reason)} > 0" for reason in WARN_THROTTLE),
    ]
    return " or ".join(terms)


def reasons_by_host(result: list[dict]) -> dict[str, list[str]]:
    """``status_reasons`` entries per host, each naming the GPU and the cause, crit before warn."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for s in result:
        labels, value = s["metric"], float(s["value"][1])
        gpu, name = labels.get("gpu_index", "?"), labels["__name__"]
        crit, text = {
            "fleet:gpu_ecc_uncorrectable": (True, f"{value:g} uncorrectable ECC errors"),
            "fleet:gpu_row_remap_failed": (True, "row remapping failed"),
            "fleet:gpu_xid_last": (True, f"fatal XID {value:g}"),
            "fleet:gpu_remapped_rows_pending": (False, "row remap pending a GPU reset"),
            "fleet:gpu_throttled": (False, f"throttled ({labels.get('reason', '')})"),
        }[name]
        level = "crit" if crit else "warn"
        found.setdefault(labels.get("host_id", ""), []).append((not crit, gpu, f"{level}: GPU {gpu} {text}"))
    return {host: [text for *_, text in sorted(items)] for host, items in found.items()}
