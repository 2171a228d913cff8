"""The numbers of a report, computed in Prometheus over the ``fleet:`` layer from the tier that holds the period.

Per host and metric: avg, p95 and max over the period (REQ-EXPORT-002), a
handful of instant queries at the period's end whatever the number of hosts.
A period of up to a day that the raw tier still holds is read from the raw
samples; longer periods, or older ones, from the 5-minute level of the
downsampling rules (rules_compiler/downsampling.py) in the long-term tier:

- avg: the mean of the 5-minute averages (each window weighs the same);
- max: the largest 5-minute maximum, i.e. the largest raw sample (exact);
- p95: the 95th percentile of the 5-minute averages. Averaging smooths
  spikes shorter than 5 minutes, so this usually reads a little below the
  p95 of the raw samples; ``Source.p95_note`` says so in every report.

A host with several series of a metric (GPUs, mounts, NICs) gets one value:
the average over its series (the fullest mount for disks, the sum for network
totals, as the API's combined series), and for p95 and max its busiest series.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from gateway.promql import selector
from gateway.series import COMBINE, Tiers
from rules_compiler.catalog import CATALOG

DAY_S = 86400
LEVEL, LEVEL_S = "5m", 300
GPU_BUSY = "gpu.utilization"
# Metrics a report may hold: one value per host makes sense for these (not per-process or per-core families).
REPORTABLE = sorted(name for name, m in CATALOG.items() if "pid" not in m.labels and name != "cpu.core")


class Source(NamedTuple):
    """Where the numbers come from, as the report states it."""

    tier: str  # "raw" | "longterm"
    resolution: str  # "raw" | "5m"
    step_s: int  # seconds one point stands for

    @property
    def p95_note(self) -> str:
        if self.resolution == "raw":
            return f"avg, p95 and max over every raw sample ({self.step_s} s apart), {self.tier} tier."
        return (
            f"From 5-minute downsampled points ({self.tier} tier): avg is the mean of the 5-minute averages, "
            "max the largest 5-minute maximum (exact), p95 the 95th percentile of the 5-minute averages, "
            "which smooths spikes shorter than 5 minutes and so reads slightly below the p95 of raw samples."
        )


class Stats(NamedTuple):
    avg: float | None
    p95: float | None
    max: float | None


class ReportData(NamedTuple):
    start: int  # Unix seconds; the report covers (start, end]
    end: int
    source: Source
    metrics: list[str]
    stats: dict[str, dict[str, Stats]]  # host_id -> metric -> Stats; hosts without any data are absent
    gpu_hours: dict[str, float]  # host_id -> busy GPU-hours (utilisation x time, summed over its GPUs)
    trend: dict[str, list[tuple[int, float]]]  # metric -> [(bucket end, fleet average)], "%" metrics only
    trend_step_s: int


def source_for(tiers: Tiers, start: int, end: int, now: int) -> Source:
    """The tier and resolution a period is read from."""
    in_raw = start >= now - tiers.raw_retention_s or tiers.longterm is None
    if end - start <= DAY_S and in_raw:
        return Source("raw", "raw", tiers.raw_step_s)
    return Source("raw" if tiers.longterm is None else "longterm", LEVEL, LEVEL_S)


def collect(tiers: Tiers, host_ids: list[str] | None, metrics: list[str], start: int, end: int, now: int):
    """Every number of the report for ``host_ids`` (None: every host Prometheus has) over (start, end]."""
    source = source_for(tiers, start, end, now)
    prom = tiers.of(source.tier)
    window = f"{(end - start) * 1000 - 1}ms"  # range selectors are closed: (start, end], no sample twice
    regex = {"host_id": host_ids} if host_ids is not None else None

    def sel(metric: str, agg: str) -> str:
        record = CATALOG[metric].record
        return selector(record if source.resolution == "raw" else f"{record}:{agg}{LEVEL}", regex=regex)

    queries: dict[tuple[str, str], str] = {}
    for m in metrics:
        combine = COMBINE.get(m, "avg")
        peak = "sum" if combine == "sum" else "max"
        queries[(m, "avg")] = f"{combine} by (host_id) (avg_over_time({sel(m, 'avg')}[{window}]))"
        queries[(m, "p95")] = f"{peak} by (host_id) (quantile_over_time(0.95, {sel(m, 'avg')}[{window}]))"
        queries[(m, "max")] = f"{peak} by (host_id) (max_over_time({sel(m, 'max')}[{window}]))"
    # Busy GPU-hours: each point is utilisation over step_s seconds.
    queries[(GPU_BUSY, "hours")] = (
        f"sum by (host_id) (sum_over_time({sel(GPU_BUSY, 'avg')}[{window}])) * {source.step_s} / 360000"
    )
    trend_step = DAY_S if end - start > 2 * DAY_S else 3600
    trend_metrics = [m for m in metrics if CATALOG[m].unit == "%"]
    bucket = f"{trend_step * 1000 - 1}ms"
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="report") as pool:
        instant = dict(zip(queries, pool.map(lambda q: prom.query(q, at=end), queries.values()), strict=True))
        trends = list(
            pool.map(
                lambda m: prom.query_range(
                    f"avg(avg_over_time({sel(m, 'avg')}[{bucket}]))", start + trend_step, end, trend_step
                ),
                trend_metrics,
            )
        )

    stats: dict[str, dict[str, Stats]] = {}
    for m in metrics:
        by_host = {
            agg: {s["metric"].get("host_id"): float(s["value"][1]) for s in instant[(m, agg)]}
            for agg in ("avg", "p95", "max")
        }
        for host in by_host["avg"].keys() | by_host["max"].keys():
            stats.setdefault(host, {})[m] = Stats(*(by_host[agg].get(host) for agg in ("avg", "p95", "max")))
    gpu_hours = {s["metric"].get("host_id"): float(s["value"][1]) for s in instant[(GPU_BUSY, "hours")]}
    trend = {
        m: [(int(ts), float(v)) for ts, v in (result[0]["values"] if result else [])]
        for m, result in zip(trend_metrics, trends, strict=True)
    }
    return ReportData(start, end, source, metrics, stats, gpu_hours, trend, trend_step)
