"""How well a job used what it was given: measured from its cgroup and GPU series, judged with reasons to act on.

``measure`` asks Prometheus what jobstats asks (the job-level cgroup series
over the job's life, at its end), ``judge`` turns the figures into a verdict
and reasons; it is pure, so its rules are tested on canned figures.
"""

from __future__ import annotations

import math
import time
from datetime import UTC

from gateway.promql import Prometheus, selector

MIN_JUDGED_S = 30  # shorter jobs: too few samples to judge (jobstats: two sampling periods)
IDLE_BELOW_PCT = 5.0  # a GPU under 5 % busy counts as idle
GPU_IDLE_REASON_PCT = 50.0  # a GPU idle at least half the job is worth a reason
CPU_LOW_PCT = 50.0
MEM_LOW_FRACTION = 0.25
MEM_HIGH_FRACTION = 0.95
GiB = 1024**3


def _ts(value) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def measure(prom: Prometheus, job) -> dict:
    """The job's figures over its life (until its end, else now): CPU, memory peak and per-GPU use."""
    start = _ts(job.start_at)
    if start is None:
        return {"elapsed_s": 0}
    end = _ts(job.end_at) or time.time()
    elapsed = max(1, int(end - start))
    w = f"[{elapsed}s]"
    level = selector("", {"jobid": job.id, "step": "", "task": ""})
    gpu = selector("nvidia_gpu_duty_cycle", {"jobid": job.id})
    (cpu_s, cpus, peak, rss, limit, gpu_mean, gpu_idle) = (
        prom.query(q, at=end)
        for q in (
            f"sum(max_over_time(cgroup_cpu_total_seconds{level}{w}))",
            f"sum(max_over_time(cgroup_cpus{level}{w}))",
            f"sum(max_over_time({selector('fleet_job_memory_peak_bytes', {'jobid': job.id})}{w}))",
            f"sum(max_over_time(cgroup_memory_rss_bytes{level}{w}))",
            f"sum(max_over_time(cgroup_memory_total_bytes{level}{w}))",
            f"avg_over_time({gpu}{w})",
            f"avg_over_time(({gpu} < bool {IDLE_BELOW_PCT:g})[{elapsed}s:15s])",
        )
    )
    cpus_alloc = job.cpus or _first(cpus)
    cpu_seconds = _first(cpu_s)
    figures = {
        "elapsed_s": elapsed,
        "cpus": cpus_alloc,
        "cpu_seconds": cpu_seconds,
        "cpu_efficiency_pct": round(100 * cpu_seconds / (cpus_alloc * elapsed), 1)
        if cpu_seconds is not None and cpus_alloc
        else None,
        "memory_peak_bytes": _first(peak) or _first(rss),
        "memory_requested_bytes": job.memory_bytes or _first(limit),
        "gpus_allocated": job.gpus,
        "gpus": [],
    }
    idle = {_gpu_key(s["metric"]): float(s["value"][1]) for s in gpu_idle}
    for s in sorted(gpu_mean, key=lambda s: _gpu_key(s["metric"])):
        key = _gpu_key(s["metric"])
        idle_fraction = idle.get(key, 0.0)
        figures["gpus"].append(
            {
                "gpu": s["metric"].get("ordinal", ""),
                "host": s["metric"].get("host_id") or s["metric"].get("instance", ""),
                "uuid": s["metric"].get("uuid", ""),
                "mean_utilization_pct": round(float(s["value"][1]), 1),
                "idle_pct": round(100 * idle_fraction, 1),
                "idle_minutes": round(idle_fraction * elapsed / 60, 1),
            }
        )
    return figures


def _first(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def _gpu_key(m: dict) -> tuple:
    return (m.get("host_id") or m.get("instance", ""), m.get("ordinal", ""), m.get("GPU_I_ID", ""))


def judge(f: dict) -> dict:
    """A verdict ("good", "wasteful", "unknown") and the reasons behind it, each saying what to change."""
    if f.get("elapsed_s", 0) < MIN_JUDGED_S:
        return {"verdict": "unknown", "reasons": [f"ran {f.get('elapsed_s', 0)} s: too short to judge"]}
    reasons = _cpu_reasons(f) + _memory_reasons(f) + _gpu_reasons(f)
    return {"verdict": "wasteful" if reasons else "good", "reasons": reasons}


def _cpu_reasons(f: dict) -> list[str]:
    eff, cpus = f.get("cpu_efficiency_pct"), f.get("cpus")
    if eff is None or not cpus or eff >= CPU_LOW_PCT:
        return []
    if cpus > 1:
        busy = cpus * eff / 100
        want = max(1, math.ceil(busy * 1.2))
        if want < cpus:
            return [f"CPU efficiency {eff:.0f} %: {busy:.1f} of {cpus} CPUs busy on average: request {want} CPUs"]
    if f.get("gpus") and any(g["mean_utilization_pct"] >= IDLE_BELOW_PCT for g in f["gpus"]):
        return []  # one CPU feeding a busy GPU waits on it: nothing to change
    return [f"CPU efficiency {eff:.0f} %: the job mostly waited (sleep, I/O or a lock): check that it is not stuck"]


def _memory_reasons(f: dict) -> list[str]:
    peak, asked = f.get("memory_peak_bytes"), f.get("memory_requested_bytes")
    if not peak or not asked:
        return []
    if peak < MEM_LOW_FRACTION * asked and asked - peak > GiB:
        want = max(1, math.ceil(peak * 1.2 / GiB))
        return [f"memory peak {_gib(peak)} of {_gib(asked)} requested ({100 * peak / asked:.0f} %): request {want} GiB"]
    if peak >= MEM_HIGH_FRACTION * asked:
        want = math.ceil(peak * 1.25 / GiB)
        return [
            f"memory peak {100 * peak / asked:.0f} % of the {_gib(asked)} requested: near the limit: request {want} GiB"
        ]
    return []


def _gpu_reasons(f: dict) -> list[str]:
    gpus = f.get("gpus") or []
    idle = [g for g in gpus if g["idle_pct"] >= GPU_IDLE_REASON_PCT]
    if not idle:
        return []
    busy = len(gpus) - len(idle)
    if busy == 0:
        return [f"no GPU used: its {len(gpus)} GPU(s) idle {min(g['idle_pct'] for g in idle):.0f} % or more of the "
                "job: run it without GPUs"]  # fmt: skip
    advice = f"request {busy} GPU" + ("s" if busy > 1 else "")
    return [f"GPU {g['gpu']} idle {g['idle_pct']:.0f} % of the job: {advice}" for g in idle]


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def fleet(prom: Prometheus, jobs: list, since_s: int, by: str, now: float) -> list[dict]:
    """GPU- and CPU-hours allocated vs used per ``by`` (user or partition) over the last ``since_s`` seconds."""
    begin = now - since_s
    level = '{step="",task=""}'
    gpu_used, cpu_max, cpu_min = (
        {s["metric"].get("jobid", ""): float(s["value"][1]) for s in result}
        for result in prom.query_many(
            [
                f"sum by (jobid) (sum_over_time(nvidia_gpu_duty_cycle[{since_s}s:1m])) / 100 / 60",
                f"sum by (jobid) (max_over_time(cgroup_cpu_total_seconds{level}[{since_s}s]))",
                f"sum by (jobid) (min_over_time(cgroup_cpu_total_seconds{level}[{since_s}s]))",
            ]
        )
    )
    groups: dict[str, dict] = {}
    for job in jobs:
        start, end = _ts(job.start_at), _ts(job.end_at) or now
        if start is None or end < begin:
            continue
        hours = (end - max(start, begin)) / 3600
        g = groups.setdefault(
            getattr(job, by) or "",
            {by: getattr(job, by) or "", "jobs": 0, "gpu_hours_allocated": 0.0, "gpu_hours_used": 0.0,
             "cpu_hours_allocated": 0.0, "cpu_hours_used": 0.0},
        )  # fmt: skip
        g["jobs"] += 1
        g["gpu_hours_allocated"] += (job.gpus or 0) * hours
        g["gpu_hours_used"] += gpu_used.get(job.id, 0.0)
        g["cpu_hours_allocated"] += (job.cpus or 0) * hours
        # The job's counter starts at 0: a job started in the window used all it counted, an older one the growth.
        used = cpu_max.get(job.id, 0.0) - (cpu_min.get(job.id, 0.0) if start < begin else 0.0)
        g["cpu_hours_used"] += used / 3600
    out = []
    for g in groups.values():
        for kind in ("gpu", "cpu"):
            alloc, used = g[f"{kind}_hours_allocated"], g[f"{kind}_hours_used"]
            g[f"{kind}_efficiency_pct"] = round(100 * used / alloc, 1) if alloc else None
            g[f"{kind}_hours_wasted"] = round(max(0.0, alloc - used), 3)
            g[f"{kind}_hours_allocated"], g[f"{kind}_hours_used"] = round(alloc, 3), round(used, 3)
        out.append(g)
    return sorted(out, key=lambda g: (-g["gpu_hours_wasted"], -g["cpu_hours_wasted"], g[by]))
