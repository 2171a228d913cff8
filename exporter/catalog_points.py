"""The catalog's points (``cpu.utilization``, ``disk.used_pct`` …) computed from the exporter's families.

The same arithmetic as the normalisation rules in ``rules_compiler/catalog.py``
(rates over wall time, iowait counted as idle, GPU memory of MIG instances
summed), so a pushed host and a scraped host read alike in the ``fleet:`` layer.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from rules_compiler.catalog import THROTTLE_REASONS, XID_RECENT_S

MiB = 1024 * 1024


class Translator:
    """Families of one scrape → catalog points; counters become rates against the previous scrape."""

    def __init__(self):
        self._prev: dict[tuple, float] = {}
        self._prev_t: float | None = None

    def points(self, families, now: float) -> list[tuple[str, float, dict]]:
        raw = defaultdict(list)
        for family in families:
            for s in family.samples:
                raw[s.name].append((s.labels, s.value))
        counters = {k: v for k, v in ((_key(n, lab), v) for n in raw if n.endswith("_total") for lab, v in raw[n])}
        dt = now - self._prev_t if self._prev_t is not None else None
        prev, self._prev, self._prev_t = self._prev, counters, now

        def rate(name, labels) -> float | None:
            old = prev.get(_key(name, labels))
            new = counters.get(_key(name, labels))
            return None if not dt or old is None or new is None or new < old else (new - old) / dt

        out: list[tuple[str, float, dict]] = []
        idle = defaultdict(float)
        for labels, _ in raw["node_cpu_seconds_total"]:
            if labels["mode"] in ("idle", "iowait"):
                r = rate("node_cpu_seconds_total", labels)
                idle[labels["cpu"]] = idle[labels["cpu"]] + r if r is not None and idle[labels["cpu"]] >= 0 else -1
        busy = {cpu: min(100.0, max(0.0, 100 * (1 - v))) for cpu, v in idle.items() if v >= 0}
        out += [(f"cpu.core.{cpu}", v, {}) for cpu, v in busy.items()]
        if busy:
            out.append(("cpu.utilization", sum(busy.values()) / len(busy), {}))
        one = {n: v[0][1] for n, v in raw.items() if len(v) == 1 and not v[0][0]}
        out += [(f"cpu.load{m}", one[f"node_load{m}"], {}) for m in (1, 5, 15) if f"node_load{m}" in one]
        mem = {n.removeprefix("node_memory_").removesuffix("_bytes"): v for n, v in one.items() if "_memory_" in n}
        if "MemTotal" in mem and "MemAvailable" in mem:
            out.append(("mem.used_pct", 100 * (1 - mem["MemAvailable"] / mem["MemTotal"]), {}))
            out.append(("mem.used_mb", (mem["MemTotal"] - mem["MemAvailable"]) / MiB, {}))
            out.append(("mem.available_mb", mem["MemAvailable"] / MiB, {}))
        if "Cached" in mem:
            out.append(("mem.cache_mb", (mem["Cached"] + mem.get("SReclaimable", 0)) / MiB, {}))
        if "SwapTotal" in mem:
            out.append(("mem.swap_pct", 100 * (mem["SwapTotal"] - mem["SwapFree"]) / max(mem["SwapTotal"], 1), {}))
        size = {lab["mountpoint"]: v for lab, v in raw["node_filesystem_size_bytes"] if v > 0}
        for lab, avail in raw["node_filesystem_avail_bytes"]:
            if lab["mountpoint"] in size:
                out.append(("disk.used_pct", 100 * (1 - avail / size[lab["mountpoint"]]), _only(lab, "mountpoint")))
        for metric, families, scale in RATES:
            for lab, _ in raw[families[0]]:
                rates = [rate(f, lab) for f in families]
                if None not in rates:
                    out.append((metric, sum(rates) * scale, _only(lab, "device")))
        if "node_sockstat_TCP_inuse" in one:
            out.append(
                ("net.sockets_active", one["node_sockstat_TCP_inuse"] + one.get("node_sockstat_TCP6_inuse", 0), {})
            )
        out += _gpu_points(raw)
        out += _gpu_health_points(raw, now)
        for metric, family, scale, extra in PROCESSES:
            for lab, v in raw[family]:
                labels = {k: lab[k] for k in ("pid", "name", "user", "slurm_job_id") if lab.get(k)}
                labels.update({"gpu_index": lab["gpu"]} if extra else {})
                out.append((metric, v * scale, labels))
        return out


RATES = (
    ("disk.iops_read", ("node_disk_reads_completed_total",), 1),
    ("disk.iops_write", ("node_disk_writes_completed_total",), 1),
    ("disk.throughput_read_mbps", ("node_disk_read_bytes_total",), 1e-6),
    ("disk.throughput_write_mbps", ("node_disk_written_bytes_total",), 1e-6),
    ("net.tx_mbps", ("node_network_transmit_bytes_total",), 8e-6),
    ("net.rx_mbps", ("node_network_receive_bytes_total",), 8e-6),
    ("net.errors", ("node_network_receive_errs_total", "node_network_transmit_errs_total"), 1),
    ("net.drops", ("node_network_receive_drop_total", "node_network_transmit_drop_total"), 1),
)
PROCESSES = (
    ("proc.top.cpu_pct", "fleet_top_process_cpu_percent", 1, False),
    ("proc.top.mem_mb", "fleet_top_process_resident_memory_bytes", 1 / MiB, False),
    ("proc.top.gpu_mem_mb", "fleet_top_process_gpu_memory_bytes", 1 / MiB, True),
)
GPU_GAUGES = (
    ("gpu.utilization", "DCGM_FI_DEV_GPU_UTIL"),
    ("gpu.temperature_c", "DCGM_FI_DEV_GPU_TEMP"),
    ("gpu.power_w", "DCGM_FI_DEV_POWER_USAGE"),
    ("gpu.ecc_uncorrectable", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ("gpu.row_remap_failed", "DCGM_FI_DEV_ROW_REMAP_FAILURE"),
)
GPU_INSTANCE = (  # (metric, family, scale) per MIG instance
    ("gpu.instance.utilization", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 100),
    ("gpu.instance.tensor_active_pct", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 100),
    ("gpu.instance.dram_active_pct", "DCGM_FI_PROF_DRAM_ACTIVE", 100),
    ("gpu.instance.memory_used_mb", "DCGM_FI_DEV_FB_USED", 1),
)


def _key(name: str, labels: dict) -> tuple:
    return (name, *sorted(labels.items()))


def _only(labels: dict, name: str) -> dict:
    return {name: labels[name]}


def _gpu_points(raw) -> list[tuple[str, float, dict]]:
    out = []
    for metric, family in GPU_GAUGES:
        per_gpu: dict[str, float] = {}
        for lab, v in raw[family]:  # device-wide values repeat on each MIG instance: max folds them
            per_gpu[lab["gpu"]] = max(v, per_gpu.get(lab["gpu"], v))
        out += [(metric, v, {"gpu_index": g}) for g, v in per_gpu.items()]

    def mem(family: str) -> dict[str, float]:
        per_instance: dict[tuple, float] = {}
        for lab, v in raw[family]:
            per_instance[(lab["gpu"], lab.get("GPU_I_ID"))] = v
        summed: dict[str, float] = defaultdict(float)
        for (gpu, _), v in per_instance.items():
            summed[gpu] += v
        return summed

    used, free, reserved = mem("DCGM_FI_DEV_FB_USED"), mem("DCGM_FI_DEV_FB_FREE"), mem("DCGM_FI_DEV_FB_RESERVED")
    for gpu, u in used.items():
        out.append(("gpu.memory_used_mb", u, {"gpu_index": gpu}))
        if gpu in free:
            total = u + free[gpu] + reserved.get(gpu, 0)
            out.append(("gpu.memory_total_mb", total, {"gpu_index": gpu}))
            if total > 0:
                out.append(("gpu.memory_used_pct", 100 * u / total, {"gpu_index": gpu}))
    return out


def _gpu_health_points(raw, now: float) -> list[tuple[str, float, dict]]:
    """XID, remap and throttling points, and MIG instances' own, as the catalog's rules compute them."""
    out = []
    pending: dict[str, float] = {}
    for family in ("DCGM_FI_DEV_RETIRED_PENDING", "DCGM_FI_DEV_ROW_REMAP_PENDING"):  # row remapping wins
        for lab, v in raw[family]:
            pending[lab["gpu"]] = v
    out += [("gpu.remapped_rows_pending", v, {"gpu_index": g}) for g, v in pending.items()]
    throttled: dict[tuple[str, str], float] = {}
    for lab, v in raw["fleet_gpu_clocks_event_reason"]:
        if lab["reason"] in THROTTLE_REASONS:
            key = (lab["gpu"], lab["reason"])
            throttled[key] = max(v, throttled.get(key, v))
    out += [("gpu.throttled", v, {"gpu_index": g, "reason": r}) for (g, r), v in throttled.items()]
    when = {_unit(lab): v for lab, v in raw["fleet_gpu_xid_last_timestamp_seconds"]}
    xid: dict[str, float] = {}
    for lab, v in raw["DCGM_FI_DEV_XID_ERRORS"]:
        recent = now - when.get(_unit(lab), -math.inf) < XID_RECENT_S
        xid[lab["gpu"]] = max(v if recent else 0, xid.get(lab["gpu"], 0))
    out += [("gpu.xid_last", v, {"gpu_index": g}) for g, v in xid.items()]
    for metric, family, scale in GPU_INSTANCE:
        for lab, v in raw[family]:
            if lab.get("GPU_I_ID"):
                labels = {"gpu_index": lab["gpu"], "gpu_instance": lab["GPU_I_ID"], "mig_profile": lab["GPU_I_PROFILE"]}
                out.append((metric, v * scale, labels))
    return out


def _unit(labels: dict) -> tuple:
    return labels["gpu"], labels.get("GPU_I_ID")


def rfc3339(t: float) -> str:
    ms = int(round(t * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
