"""GPU health in a host's status (§8.2): which recorded GPU series make a host crit or warn, and why.

Only broken or degraded hardware is judged: an uncorrectable ECC error, a
failed row remap or a fatal XID is crit (the GPU needs a reset or service);
thermal or hardware slowdown and a remap waiting for a reset are warn. A
busy GPU is not: utilisation is shown, never judged.
"""

from __future__ import annotations

from gateway.promql import any_of

# XIDs after which the GPU needs a reset or service (NVIDIA's XID catalog): double-bit ECC,
# fallen off the bus, contained and uncontained ECC errors.
FATAL_XIDS = (48, 79, 94, 95)
WARN_THROTTLE = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown")
# The recorded GPU series a problem shows in (above 0).
PROBLEMS = (
    "fleet:gpu_ecc_uncorrectable",
    "fleet:gpu_row_remap_failed",
    "fleet:gpu_xid_last",
    "fleet:gpu_remapped_rows_pending",
    "fleet:gpu_throttled",
)


def problems_query(host_ids: list[str] | None) -> str:
    """One PromQL query for every GPU problem of ``host_ids`` (None: the whole fleet).

    One selector, the hosts named once: a term per cause, each naming the page's
    hosts, made a page of 1,000 hosts' 64-character ids a query of 1 MB, past what
    Prometheus's request line and VictoriaMetrics' ``-search.maxQueryLen`` take.
    Only the throttle reasons judged (the other records have no ``reason``, which
    the empty alternative matches) and values above 0 come back; reasons_by_host
    keeps the fatal XIDs.
    """
    regex = {"reason": ["", *WARN_THROTTLE], **({} if host_ids is None else {"host_id": host_ids})}
    return f"{any_of(list(PROBLEMS), regex)} > 0"


def reasons_by_host(result: list[dict]) -> dict[str, list[str]]:
    """``status_reasons`` entries per host, each naming the GPU and the cause, crit before warn."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for s in result:
        labels, value = s["metric"], float(s["value"][1])
        gpu, name = labels.get("gpu_index", "?"), labels["__name__"]
        if name == "fleet:gpu_xid_last" and value not in FATAL_XIDS:
            continue  # an application's XID (13, 31, 43, ...): the GPU is fine
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
