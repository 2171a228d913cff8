"""The catalog's points (``cpu.utilization``, ``disk.used_pct`` …) computed from the exporter's families.

The arithmetic of ``exporter/catalog_table.py`` evaluated in Python, as
``rules_compiler/catalog.py`` renders it in PromQL for the recording rules:
rates over wall time, iowait counted as idle, GPU memory of MIG instances
summed. tests/test_catalog_parity.py holds the two to the same values.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from exporter import catalog_table as T
from exporter.catalog_table import scaled

Point = tuple[str, float, dict]


class Translator:
    """Families of one scrape → catalog points; counters become rates against the previous scrape."""

    def __init__(self):
        self._prev: dict[tuple, float] = {}
        self._prev_t: float | None = None

    def points(self, families, now: float) -> list[Point]:
        raw = defaultdict(list)
        for family in families:
            for s in family.samples:
                raw[s.name].append((s.labels, s.value))
        cumulative = [n for n in raw if n.endswith("_total") or n in T.CUMULATIVE_GAUGES]
        counters = {_key(n, lab): v for n in cumulative for lab, v in raw[n]}
        dt = now - self._prev_t if self._prev_t is not None else None
        prev, self._prev, self._prev_t = self._prev, counters, now

        def rate(name, labels) -> float | None:
            old = prev.get(_key(name, labels))
            new = counters.get(_key(name, labels))
            return None if not dt or old is None or new is None or new < old else (new - old) / dt

        one = {n: v[0][1] for n, v in raw.items() if len(v) == 1 and not v[0][0]}
        return [
            *_cpu_points(raw, rate),
            *_host_points(one),
            *_disk_used(raw),
            *_rate_points(raw, rate),
            *_gpu_points(raw),
            *_gpu_health_points(raw, now),
            *_gpu_instance_points(raw),
            *_process_points(raw),
            *_job_points(raw, rate),
        ]


def _cpu_points(raw, rate) -> list[Point]:
    idle: dict[str, float | None] = {}
    for labels, _ in raw[T.CPU_SECONDS]:
        if labels["mode"] in T.IDLE_MODES:
            r, cpu = rate(T.CPU_SECONDS, labels), labels["cpu"]
            idle[cpu] = None if r is None or idle.get(cpu, 0.0) is None else idle.get(cpu, 0.0) + r
    known = {cpu: v for cpu, v in idle.items() if v is not None}
    out: list[Point] = [(f"cpu.core.{cpu}", _busy(v), {}) for cpu, v in known.items()]
    if known:
        out.append(("cpu.utilization", _busy(sum(known.values()) / len(known)), {}))
    return out


def _busy(idle_per_second: float) -> float:
    # rate() of counters read a moment apart can come out a hair above 1 s/s of idle.
    return min(100.0, max(0.0, 100 * (1 - idle_per_second)))


def _host_points(one: dict[str, float]) -> list[Point]:
    out = []
    for metric, (families, scale) in T.HOST_GAUGES.items():
        if families[0] in one:
            out.append((metric, scaled(sum(one.get(f, 0.0) for f in families), scale), {}))
    if T.MEM_TOTAL in one and T.MEM_AVAILABLE in one:
        total, available = one[T.MEM_TOTAL], one[T.MEM_AVAILABLE]
        out.append(("mem.used_pct", 100 * (1 - available / total), {}))
        out.append(("mem.used_mb", (total - available) / T.MiB, {}))
    if T.SWAP_TOTAL in one and T.SWAP_FREE in one:
        swap = one[T.SWAP_TOTAL]
        out.append(("mem.swap_pct", 100 * (swap - one[T.SWAP_FREE]) / max(swap, 1), {}))
    return out


def _disk_used(raw) -> list[Point]:
    size = {lab["mountpoint"]: v for lab, v in raw[T.FS_SIZE] if v > 0}
    return [
        ("disk.used_pct", 100 * (1 - avail / size[lab["mountpoint"]]), {"mountpoint": lab["mountpoint"]})
        for lab, avail in raw[T.FS_AVAIL]
        if lab["mountpoint"] in size
    ]


def _rate_points(raw, rate) -> list[Point]:
    out = []
    for metric, (families, scale) in T.RATES.items():
        for lab, _ in raw[families[0]]:
            rates = [rate(f, lab) for f in families]
            if None not in rates:
                out.append((metric, scaled(sum(rates), scale), {T.RATE_LABEL: lab[T.RATE_LABEL]}))
    return out


def _gpu_points(raw) -> list[Point]:
    out = []
    for metric, family in T.GPU_GAUGES.items():
        per_gpu: dict[str, float] = {}
        for lab, v in raw[family]:  # device-wide values repeat on each MIG instance: max folds them
            per_gpu[lab[T.GPU_LABEL]] = max(v, per_gpu.get(lab[T.GPU_LABEL], v))
        out += [(metric, v, {"gpu_index": g}) for g, v in per_gpu.items()]

    def mem(family: str) -> dict[str, float]:
        per_instance: dict[tuple, float] = {}
        for lab, v in raw[family]:
            instance = (lab[T.GPU_LABEL], lab.get(T.GPU_INSTANCE_LABEL))
            per_instance[instance] = max(v, per_instance.get(instance, v))
        summed: dict[str, float] = defaultdict(float)
        for (gpu, _), v in per_instance.items():
            summed[gpu] += v
        return summed

    used, free, reserved = mem(T.FB_USED), mem(T.FB_FREE), mem(T.FB_RESERVED)
    for gpu, u in used.items():
        out.append(("gpu.memory_used_mb", u, {"gpu_index": gpu}))
        if gpu in free:
            total = u + free[gpu] + reserved.get(gpu, 0)
            out.append(("gpu.memory_total_mb", total, {"gpu_index": gpu}))
            if total > 0:
                out.append(("gpu.memory_used_pct", 100 * u / total, {"gpu_index": gpu}))
    return out


def _gpu_health_points(raw, now: float) -> list[Point]:
    """Remaps pending, throttling and the last recent XID per GPU, as the catalog's rules fold them."""
    pending: dict[str, float] = {}
    for family in reversed(T.REMAP_PENDING):  # the first family of the table wins
        pending.update({lab[T.GPU_LABEL]: v for lab, v in raw[family]})
    out: list[Point] = [("gpu.remapped_rows_pending", v, {"gpu_index": g}) for g, v in pending.items()]
    throttled: dict[tuple[str, str], float] = {}
    for lab, v in raw[T.CLOCKS_EVENT_REASON]:
        if lab["reason"] in T.THROTTLE_REASONS:
            key = (lab[T.GPU_LABEL], lab["reason"])
            throttled[key] = max(v, throttled.get(key, v))
    out += [("gpu.throttled", v, {"gpu_index": g, "reason": r}) for (g, r), v in throttled.items()]
    when = {_unit(lab): v for lab, v in raw[T.XID_LAST_TIME]}
    xid: dict[str, float] = {}
    for lab, v in raw[T.XID_LAST]:
        recent = now - when.get(_unit(lab), -math.inf) < T.XID_RECENT_S
        xid[lab[T.GPU_LABEL]] = max(v if recent else 0, xid.get(lab[T.GPU_LABEL], 0))
    return out + [("gpu.xid_last", v, {"gpu_index": g}) for g, v in xid.items()]


def _gpu_instance_points(raw) -> list[Point]:
    out = []
    for metric, (family, scale) in T.GPU_INSTANCE.items():
        for lab, v in raw[family]:
            if lab.get(T.GPU_INSTANCE_LABEL):
                labels = {
                    "gpu_index": lab[T.GPU_LABEL],
                    "gpu_instance": lab[T.GPU_INSTANCE_LABEL],
                    "mig_profile": lab[T.GPU_INSTANCE_PROFILE_LABEL],
                }
                out.append((metric, scaled(v, scale), labels))
    return out


def _unit(labels: dict) -> tuple:
    return labels[T.GPU_LABEL], labels.get(T.GPU_INSTANCE_LABEL)


def _process_points(raw) -> list[Point]:
    out = []
    for metric, (family, scale, per_gpu) in T.PROCESSES.items():
        for lab, v in raw[family]:
            labels = {k: lab[k] for k in T.PROCESS_LABELS if lab.get(k)}
            labels.update({"gpu_index": lab[T.GPU_LABEL]} if per_gpu else {})
            out.append((metric, scaled(v, scale), labels))
    return out


def _job_points(raw, rate) -> list[Point]:
    def job_level(labels: dict) -> bool:
        return all(labels.get(k, "") == v for k, v in T.JOB_LEVEL)

    out: list[Point] = []
    for metric, (family, scale) in T.JOB_GAUGES.items():
        out += [(metric, scaled(v, scale), {T.JOB_LABEL: lab[T.JOB_LABEL]}) for lab, v in raw[family] if job_level(lab)]
    cpus = {lab[T.JOB_LABEL]: v for lab, v in raw[T.JOB_CPUS] if job_level(lab)}
    for lab, _ in raw[T.JOB_CPU_SECONDS]:
        used, allocated = rate(T.JOB_CPU_SECONDS, lab), cpus.get(lab[T.JOB_LABEL])
        if job_level(lab) and used is not None and allocated:
            out.append(("job.cpu_pct", 100 * used / allocated, {T.JOB_LABEL: lab[T.JOB_LABEL]}))
    for metric, (family, index, scale, summed) in T.JOB_GPUS.items():
        per_instance: dict[tuple, float] = {}
        for lab, v in raw[family]:
            key = (lab[T.JOB_LABEL], lab[index], lab.get(T.GPU_INSTANCE_LABEL, ""))
            per_instance[key] = max(v, per_instance.get(key, v))
        per_gpu: dict[tuple, float] = {}
        for (job, gpu, _), v in per_instance.items():
            per_gpu[job, gpu] = per_gpu.get((job, gpu), 0.0) + v if summed else max(v, per_gpu.get((job, gpu), v))
        out += [(metric, scaled(v, scale), {T.JOB_LABEL: job, "gpu_index": gpu}) for (job, gpu), v in per_gpu.items()]
    return out


def _key(name: str, labels: dict) -> tuple:
    return (name, *sorted(labels.items()))


def rfc3339(t: float) -> str:
    ms = int(round(t * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
