"""Pushed points checked one by one (§8.7, §11.2) and grouped into Prometheus series.

Points are checked in a plain loop, not through marshmallow: a batch of
10,000 points is checked in a few milliseconds that way, and one bad point
must not fail its neighbours. Each series is keyed by its encoded remote-write
labels, so what is checked here is sent as is.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import datetime

from exporter.masking import ProcessMasking
from gateway.remote_write import encode_labels
from rules_compiler.catalog import UnknownMetric, resolve

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
RESERVED = {"host_id", "job", "instance"}
MAX_LABELS, MAX_VALUE_CHARS = 10, 128


@functools.lru_cache(maxsize=256)
def _metric(name: str) -> tuple[str, tuple]:
    """``("fleet:cpu_core", (("core", "3"),))`` for ``cpu.core.3``; UnknownMetric for a name not in the catalog."""
    entry, implied = resolve(name)
    return entry.record, tuple(sorted(implied.items()))


@functools.lru_cache(maxsize=65_536)
def _ts_ms(text: str) -> int:
    # An agent's points share a handful of timestamps (one per sample): parsed once each.
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("no UTC offset")
    return round(when.timestamp() * 1000)


@functools.lru_cache(maxsize=65_536)
def _series_labels(host_id: str, record: str, labels: tuple) -> bytes:
    return encode_labels([("__name__", record), *sorted((*labels, ("host_id", host_id)))])


def _labels_of(point: dict, implied: tuple) -> tuple:
    labels = point.get("labels")
    if not labels:
        return implied
    if not isinstance(labels, dict):
        raise ValueError("labels must be an object of text values")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per point")
    for name, value in labels.items():
        if not LABEL_NAME.match(name) or name.startswith("__") or name in RESERVED:
            raise ValueError(f"label name {name[:70]!r}: letters, digits and _, at most 64, not {sorted(RESERVED)}")
        if not isinstance(value, str):
            raise ValueError(f"label {name}: the value must be text")
        if len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise ValueError(f"label {name}: at most {MAX_VALUE_CHARS} printable characters")
    if implied and any(labels.get(k, v) != v for k, v in implied):
        raise ValueError(f"labels contradict the metric name: {dict(implied)}")
    # An empty value is an absent label to Prometheus: drop it rather than store a second shape.
    return tuple(sorted({**{k: v for k, v in labels.items() if v}, **dict(implied)}.items()))


def check_points(
    host_id: str,
    points: list,
    now_ms: int,
    past_ms: int,
    future_ms: int,
    mask: ProcessMasking | None = None,
):
    """Valid points grouped by series, ``{labels: [(ts_ms, value, index), …]}``, and the others' ``{index, reason}``.

    With ``mask`` (the process-masking policy), process names and users it names are stored masked.
    The host's and the key's series budgets are the caller's (``refuse`` takes the series beyond them).
    """
    valid, errors = {}, []
    low, high = now_ms - past_ms, now_ms + future_ms
    for index, point in enumerate(points):
        try:
            if not isinstance(point, dict):
                raise ValueError("a point is an object {metric, ts, value, labels}")
            name = point.get("metric")
            if not isinstance(name, str):
                raise ValueError("metric: a catalog name is required")
            record, implied = _metric(name)
            value = point.get("value")
            if type(value) is not float and type(value) is not int:
                raise ValueError("value: a number is required")
            try:
                value = float(value)  # an integer too big for a double is an OverflowError, not a 500
            except OverflowError:
                raise ValueError("value: out of range for a 64-bit float") from None
            if not math.isfinite(value):
                raise ValueError("value: must be finite (no NaN or Infinity)")
            ts = point.get("ts")
            if not isinstance(ts, str):
                raise ValueError("ts: an RFC 3339 time is required, e.g. 2025-11-13T08:50:00Z")
            try:
                ts_ms = _ts_ms(ts)
            except ValueError:
                raise ValueError(f"ts: {ts[:40]!r} is not an RFC 3339 time with Z or an offset") from None
            if ts_ms < low:
                raise ValueError(f"ts: older than {past_ms // 60_000} min")
            if ts_ms > high:
                raise ValueError(f"ts: more than {future_ms // 60_000} min in the future")
            labels = _labels_of(point, implied) if "labels" in point else implied
            if mask and labels:
                labels = tuple(
                    (k, mask.name(v) if k == "name" else mask.user(v) if k == "user" else v) for k, v in labels
                )
            labels = _series_labels(host_id, record, labels)
        except UnknownMetric:
            errors.append({"index": index, "reason": f"metric: unknown name {str(name)[:80]!r}; see /api/v1/metrics"})
        except ValueError as exc:
            errors.append({"index": index, "reason": str(exc)})
        else:
            samples = valid.get(labels)
            if samples is None:
                valid[labels] = samples = []
            samples.append((ts_ms, float(value), index))
    return valid, errors


def refuse(valid: dict, errors: list, series: list[bytes], reason: str) -> None:
    """Move the points of ``series`` from ``valid`` to ``errors``, each with ``reason``."""
    for labels in series:
        errors.extend({"index": sample[2], "reason": reason} for sample in valid.pop(labels))


def in_order(valid: dict) -> tuple[list, list]:
    """Each series' samples by time; a point repeated in one request is stored once, a conflicting one refused."""
    series, errors = [], []
    for labels, samples in valid.items():
        samples.sort()
        kept = [samples[0]]
        for sample in samples[1:]:
            if sample[0] == kept[-1][0]:
                if sample[1] != kept[-1][1]:
                    errors.append({"index": sample[2], "reason": f"same series and ts as point {kept[-1][2]}"})
                continue
            kept.append(sample)
        series.append((labels, kept))
    return series, errors
