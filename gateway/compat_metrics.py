"""Seed 000's metrics API (``/api/metrics/…``) for frontends built against it: GPU snapshots from the catalog.

A MetricSnapshot is one GPU of one node at one time: ``nodeId`` is the host
id, ``gpuIndex`` dcgm-exporter's ``gpu``, the readings the catalog's
``gpu.*`` series (the same ``fleet:`` layer the v1 API reads). Same auth,
roles and error shape as /api/v1.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import marshmallow as ma
from flask import current_app, jsonify
from flask.views import MethodView

from gateway.errors import ApiError, Blueprint
from gateway.hosts import get_host
from gateway.promql import selector
from gateway.schemas import utc_text
from rules_compiler.catalog import CATALOG

blp = Blueprint("compat-metrics", __name__, url_prefix="/api/metrics", description="Seed 000's API: GPU snapshots")

# MetricSnapshot field -> catalog metric
FIELDS = {
    "utilization": "gpu.utilization",
    "memoryUsedMB": "gpu.memory_used_mb",
    "memoryTotalMB": "gpu.memory_total_mb",
    "temperatureC": "gpu.temperature_c",
    "powerUsageW": "gpu.power_w",
}
# MetricSnapshot objects, for the OpenAPI document.
SNAPSHOTS = {
    "description": "MetricSnapshot objects",
    "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
}
HISTORY_POINTS = 1000  # per GPU and reading, at most: the step grows with the span


class Instant(ma.fields.Field):
    """A time as RFC 3339 text or Unix milliseconds (what a JavaScript Date gives either way); out: Unix seconds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Unix milliseconds up to the year 9999, past which Python has no datetime.
        either = [
            {"type": "string", "format": "date-time"},
            {"type": "number", "minimum": 0, "maximum": 253402300799999},
        ]
        self.metadata = {**self.metadata, "openapi": {"anyOf": either, **self.metadata}}

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            if isinstance(value, int | float) or str(value).lstrip("-").isdigit():
                return float(value) / 1000
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).timestamp()
        except (TypeError, ValueError):
            raise ma.ValidationError("expected RFC 3339 (2025-11-13T08:00:00Z) or Unix milliseconds") from None


class SnapshotHistoryArgs(ma.Schema):
    nodeId = ma.fields.String(validate=ma.validate.Length(min=1, max=64))
    from_ = Instant(data_key="from", metadata={"description": "default: an hour before `to`"})
    to = Instant(metadata={"description": "default: now"})


def snapshots(results: list[list[dict]]) -> list[dict]:
    """MetricSnapshots from one answer per FIELDS entry (instant or range), ordered by node, GPU and time.

    A range answer's points share the step grid, so a time is one snapshot. Instant answers are each
    evaluated at their own moment (milliseconds apart): their readings make one snapshot per GPU,
    stamped with the newest.
    """
    rows: dict[tuple, dict] = {}
    for field, result in zip(FIELDS, results, strict=True):
        for series in result:
            labels = series["metric"]
            gpu = (labels.get("host_id", ""), int(labels.get("gpu_index", 0)))
            for ts, value in series.get("values") or [series["value"]]:
                key = (*gpu, float(ts) if "values" in series else 0.0)
                row = rows.setdefault(key, {"nodeId": gpu[0], "gpuIndex": gpu[1], **dict.fromkeys(FIELDS)})
                row["timestamp"] = max(row.get("timestamp", ""), utc_text(float(ts)))
                row[field] = round(float(value), 2)
    return [{"id": i, **rows[key]} for i, key in enumerate(sorted(rows), start=1)]


def _selectors(node_id: str | None) -> list[str]:
    return [selector(CATALOG[m].record, {"host_id": node_id} if node_id else {}) for m in FIELDS.values()]


@blp.route("/current")
class Current(MethodView):
    @blp.doc(responses={"200": SNAPSHOTS})
    def get(self):
        """The latest MetricSnapshot of every GPU of every node."""
        return jsonify(snapshots(current_app.extensions["prometheus"].query_many(_selectors(None))))


@blp.route("/gpu/<node_id>")
class GpuByNode(MethodView):
    @blp.doc(responses={"200": SNAPSHOTS})
    def get(self, node_id):
        """The latest MetricSnapshot of each GPU of one node (404: no such host; [] a host without GPUs)."""
        get_host(node_id, discovered=True)
        return jsonify(snapshots(current_app.extensions["prometheus"].query_many(_selectors(node_id))))


@blp.route("/history")
class History(MethodView):
    @blp.doc(responses={"200": SNAPSHOTS})
    @blp.arguments(SnapshotHistoryArgs, location="query")
    def get(self, args):
        """MetricSnapshots between ``from`` and ``to`` (of one node with ``nodeId``), from the raw tier."""
        tiers = current_app.extensions["tiers"]
        end = args.get("to") or time.time()
        start = args.get("from_") or end - 3600
        if not start < end:
            raise ApiError("`from` must be before `to`", {"from": utc_text(start), "to": utc_text(end)})
        if time.time() - start > tiers.raw_retention_s:
            raise ApiError(
                "history older than the raw tier keeps: use /api/v1/metrics/query with a range and resolution",
                {"from": utc_text(start), "kept_s": tiers.raw_retention_s},
            )
        if args.get("nodeId"):
            get_host(args["nodeId"], discovered=True)
        step_s = max(tiers.raw_step_s, math.ceil((end - start) / HISTORY_POINTS))
        queries = _selectors(args.get("nodeId"))
        results = [tiers.raw.query_range(q, start, end, step_s) for q in queries]
        return jsonify(snapshots(results))
