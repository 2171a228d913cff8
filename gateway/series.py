"""Series of one catalog metric of one host over a range, at a resolution fit for the range."""

from __future__ import annotations

import time
from typing import NamedTuple

from gateway.errors import ApiError
from gateway.promql import selector
from gateway.schemas import utc_text
from rules_compiler.catalog import UnknownMetric, resolve


class Resolution(NamedTuple):
    step_s: int  # seconds between returned points
    average: bool  # points are averages over the step, not raw samples


# Raw up to 6 h (1 h of CPU is 720 points at 5 s); averaged beyond, to keep answers near 2,000 points.
RANGES = {
    "15m": (15 * 60, Resolution(0, False)),
    "1h": (3600, Resolution(0, False)),
    "6h": (6 * 3600, Resolution(0, False)),
    "24h": (86400, Resolution(60, True)),
    "7d": (7 * 86400, Resolution(300, True)),
    "30d": (30 * 86400, Resolution(3600, True)),
    "90d": (90 * 86400, Resolution(3600, True)),
}
# How the several series of one host (GPUs, mounts, NICs) combine into one line.
COMBINE = {"disk.used_pct": "max", "net.tx_mbps": "sum", "net.rx_mbps": "sum", "net.errors": "sum", "net.drops": "sum"}


def label_of(step_s: int) -> str:
    return f"{step_s // 3600}h" if step_s % 3600 == 0 else f"{step_s // 60}m" if step_s % 60 == 0 else f"{step_s}s"


def catalog_selector(metric: str, host_id: str, labels: dict[str, str] | None = None):
    """The PromQL selector of a friendly metric name for one host, and its catalog entry.

    Raises:
        ApiError: unknown metric (400, listing the valid names) or a label it does not have.
    """
    try:
        entry, matchers = resolve(metric)
    except UnknownMetric as exc:
        raise ApiError(str(exc), {"metric": metric, "valid": exc.valid}) from None
    for name in labels or {}:
        if name not in entry.labels:
            raise ApiError(f"{metric} has no label {name!r}", {"label": name, "valid": list(entry.labels)})
    return selector(entry.record, {"host_id": host_id, **matchers, **(labels or {})}), entry


def fetch_series(
    prom,
    metric: str,
    host_id: str,
    range_: str,
    labels: dict[str, str] | None = None,
    combine: bool = False,
    raw_step_s: int = 5,
) -> tuple[list, str]:
    """Datapoints [{ts, value}] (or, without ``combine``, one list per label set) and the resolution used."""
    sel, entry = catalog_selector(metric, host_id, labels)
    span_s, res = RANGES[range_]
    step = res.step_s or raw_step_s
    expr = f"avg_over_time({sel}[{label_of(step)}])" if res.average else sel
    if combine:
        extra = [lbl for lbl in entry.labels if lbl not in (labels or {})]
        if extra:
            expr = f"{COMBINE.get(metric, 'avg')} by (host_id) ({expr})"
    # Points fall at start + k·step: a start on a whole multiple of the step keeps
    # timestamps stable from one call to the next; the end stays "now" for the newest point.
    end = time.time()
    start = -(-(end - span_s) // step) * step
    result = prom.query_range(expr, start, end, step)
    series = [
        {"labels": {k: v for k, v in s["metric"].items() if k in entry.labels}, "datapoints": points(s["values"])}
        for s in result
    ]
    resolution = label_of(step)
    if combine:
        return (series[0]["datapoints"] if series else []), resolution
    return series, resolution


def points(values: list) -> list[dict]:
    return [{"ts": utc_text(ts), "value": float(v)} for ts, v in values]
