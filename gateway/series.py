"""Series of one catalog metric of one host over a range, from the tier and resolution fit for the range.

Two tiers (rules_compiler/downsampling.py): the raw Prometheus holds every
sample for its retention (7 d by default); the long-term Prometheus holds the
downsampled series (1m, 5m, 1h), which the downsampler records and sends it,
for up to 90 d. A query is answered by one tier, never stitched from both, so
no point is counted twice: raw samples from the raw tier, levels from the
long-term tier.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

from gateway.errors import ApiError
from gateway.promql import Prometheus, selector
from gateway.schemas import unix_text
from rules_compiler.catalog import UnknownMetric, resolve
from rules_compiler.downsampling import LEVELS
from rules_compiler.promql import seconds

DAY_S = 86400
RANGES = {  # name -> span in seconds
    "15m": 15 * 60,
    "1h": 3600,
    "6h": 6 * 3600,
    "24h": DAY_S,
    "7d": 7 * DAY_S,
    "30d": 30 * DAY_S,
    "90d": 90 * DAY_S,
}
LEVEL_S = {level.name: level.seconds for level in LEVELS}
RESOLUTIONS = ("raw", *LEVEL_S)
# REQ-STORE-003 with AC-BE-003: raw up to 6 h (1 h of CPU is 720 points at 5 s),
# then the coarsest average that still draws the range in 300 to 1,500 points.
AUTO = ((6 * 3600, "raw"), (DAY_S, "1m"), (7 * DAY_S, "5m"))
# REQ-RETENTION-002: how long the long-term tier serves each level (at most its own retention).
LONGTERM_KEEPS_S = {"1m": 30 * DAY_S, "5m": 90 * DAY_S, "1h": 90 * DAY_S}
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
# How the several series of one host (GPUs, mounts, NICs) combine into one line.
COMBINE = {"disk.used_pct": "max", "net.tx_mbps": "sum", "net.rx_mbps": "sum", "net.errors": "sum", "net.drops": "sum"}


def duration_s(text: str | int | float) -> int:
    """Whole seconds in "5s", "7d", … (a number, as the environment may give, is seconds already)."""
    return int(text) if isinstance(text, int | float) else int(seconds(text))


@dataclass(frozen=True)
class Tiers:
    """The two Prometheus servers a query may be answered by, and what each keeps."""

    raw: Prometheus
    # The downsampled levels (the raw tier records none: the downsampler sends them here).
    # None: one Prometheus answers everything, levels included.
    longterm: Prometheus | None = None
    raw_step_s: int = 5  # the scrape interval: raw points are this far apart
    raw_retention_s: int = 7 * DAY_S
    longterm_retention_s: int = 90 * DAY_S

    @classmethod
    def from_config(cls, config, raw: Prometheus, longterm: Prometheus | None) -> Tiers:
        return cls(
            raw,
            longterm,
            max(1, duration_s(config["SCRAPE_INTERVAL"])),
            duration_s(config["RAW_RETENTION"]),
            duration_s(config["LONGTERM_RETENTION"]),
        )

    def of(self, tier: str) -> Prometheus:
        """The server of ``tier`` ("raw" or "longterm")."""
        return self.longterm if tier == "longterm" else self.raw

    def step_s(self, resolution: str) -> int:
        """Seconds between the points of ``resolution``: the scrape interval for raw samples."""
        return self.raw_step_s if resolution == "raw" else LEVEL_S[resolution]


class Plan(NamedTuple):
    """Where and how a range is read."""

    resolution: str  # "raw", "1m", "5m", "1h"
    step_s: int  # seconds between returned points
    tier: str  # "raw" or "longterm"


class Answer(NamedTuple):
    series: list  # [{ts, value}] combined, or [{labels, datapoints}] one per label set
    resolution: str  # the step: "5s", "1m", "5m", "1h"
    tier: str


def plan(tiers: Tiers, range_: str, resolution: str | None = None) -> Plan:
    """The tier and step for ``range_``; ``resolution`` is the caller's choice, else the automatic one.

    Raises:
        ApiError: the chosen resolution is not kept for that long, or would be too many points (400).
    """
    span_s = RANGES[range_]
    chosen = resolution or next((res for upto, res in AUTO if span_s <= upto), "1h")
    step_s = tiers.step_s(chosen)
    if resolution is None and chosen == "raw":
        step_s = max(step_s, math.ceil(span_s / MAX_POINTS))  # a 1 s scrape interval over 6 h
    tier = "raw" if chosen == "raw" or tiers.longterm is None else "longterm"
    if span_s > _kept_s(tiers, chosen):
        raise ApiError(
            f"{chosen} data is not kept for {range_}",
            {"resolution": chosen, "range": range_, "valid": _kept_for(tiers, span_s)},
        )
    if span_s / step_s > MAX_POINTS:
        raise ApiError(
            f"{range_} at {chosen} would be {span_s // step_s} points; at most {MAX_POINTS}",
            {"resolution": chosen, "range": range_, "valid": _kept_for(tiers, span_s)},
        )
    return Plan(chosen, step_s, tier)


def _kept_s(tiers: Tiers, resolution: str) -> float:
    """How far back ``resolution`` reaches: raw samples in the raw tier, levels in the long-term tier."""
    if tiers.longterm is None:
        return math.inf  # one Prometheus, whatever it keeps: it answers every range
    if resolution == "raw":
        return tiers.raw_retention_s
    return min(LONGTERM_KEEPS_S[resolution], tiers.longterm_retention_s)


def _kept_for(tiers: Tiers, span_s: int) -> list[str]:
    return [res for res in RESOLUTIONS if span_s <= _kept_s(tiers, res) and span_s / tiers.step_s(res) <= MAX_POINTS]


def label_of(step_s: int) -> str:
    return f"{step_s // 3600}h" if step_s % 3600 == 0 else f"{step_s // 60}m" if step_s % 60 == 0 else f"{step_s}s"


def _entry(metric: str, labels: dict[str, str] | None):
    """The catalog entry of a friendly metric name and its label matchers.

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
    return entry, {**matchers, **(labels or {})}


def fetch_series(
    tiers: Tiers,
    metric: str,
    host_id: str,
    range_: str,
    labels: dict[str, str] | None = None,
    combine: bool = False,
    resolution: str | None = None,
) -> Answer:
    """Datapoints [{ts, value}] (or, without ``combine``, one list per label set), the step and the tier used."""
    entry, matchers = _entry(metric, labels)
    how = plan(tiers, range_, resolution)
    matchers = {"host_id": host_id, **matchers}
    expr = read_expr(entry.record, matchers, how)
    if combine:
        extra = [lbl for lbl in entry.labels if lbl not in (labels or {})]
        if extra:
            expr = f"{COMBINE.get(metric, 'avg')} by (host_id) ({expr})"
    # Points fall at start + k·step: a start on a whole multiple of the step keeps
    # timestamps stable from one call to the next; the end stays "now" for the newest point.
    end = time.time()
    start = -(-(end - RANGES[range_]) // how.step_s) * how.step_s
    result = tiers.of(how.tier).query_range(expr, start, end, how.step_s)
    series = [
        {"labels": {k: v for k, v in s["metric"].items() if k in entry.labels}, "datapoints": points(s["values"])}
        for s in result
    ]
    if combine:
        series = series[0]["datapoints"] if series else []
    return Answer(series, label_of(how.step_s), how.tier)


def read_expr(record: str, matchers: dict[str, str], how: Plan) -> str:
    """PromQL for a recorded catalog series at ``how``'s resolution: its raw samples, or one average per step."""
    if how.resolution == "raw":
        return selector(record, matchers)
    # One recorded average per step: the latest evaluation in (T - step, T]. The
    # window is a millisecond short of the step, as the rules' own (downsampling.py),
    # so a point never repeats its neighbour's value.
    sel = selector(f"{record}:avg{how.resolution}", matchers)
    return f"last_over_time({sel}[{how.step_s * 1000 - 1}ms])"


def points(values: list, text=unix_text) -> list[dict]:
    return [{"ts": text(int(ts)), "value": float(v)} for ts, v in values]
