"""Metrics by friendly name (§8.3): the catalog and range queries for one host."""

from __future__ import annotations

import json

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from gateway.db import Host, db
from gateway.discovery import discovered_hosts
from gateway.errors import Blueprint, NotFound
from gateway.hosts import HOST_ID
from gateway.lookup_cache import lookup_cache
from gateway.schemas import Pattern, fast_json
from gateway.series import RANGES, RESOLUTIONS, fetch_series
from rules_compiler.catalog import catalog_listing, name_pattern

blp = Blueprint("metrics", __name__, url_prefix="/api/v1/metrics", description="Metrics by friendly name")


class LabelsField(ma.fields.Field):
    """A JSON object of label matchers in a query string, e.g. labels={"gpu_index":"0"}."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            labels = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            raise ma.ValidationError('expected a JSON object such as {"gpu_index":"0"}') from None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ma.ValidationError("expected a JSON object of string values")
        return labels


METRIC_NAME = name_pattern()  # every friendly name the catalog resolves


class QueryArgs(ma.Schema):
    host_id = ma.fields.String(required=True, validate=Pattern(HOST_ID.pattern, error="not a host id"))
    metric = ma.fields.String(
        required=True,
        # Checked by the catalog's resolve(), whose 400 lists the valid names; the pattern says the same.
        metadata={
            "pattern": METRIC_NAME,
            "description": "a friendly name from GET /api/v1/metrics/catalog, e.g. cpu.utilization",
        },
    )
    range = ma.fields.String(load_default="1h", validate=ma.validate.OneOf(list(RANGES)))
    labels = LabelsField(
        load_default=dict,
        metadata={
            "type": "string",
            # A JSON object of strings; the pattern takes those without escapes, the API any.
            "pattern": r'^ *\{ *(?:"[^"\\\x00-\x1f]*" *: *"[^"\\\x00-\x1f]*"'
            r'(?: *, *"[^"\\\x00-\x1f]*" *: *"[^"\\\x00-\x1f]*")*)? *\} *$',
            "example": '{"gpu_index":"0"}',
        },
    )
    resolution = ma.fields.String(
        validate=ma.validate.OneOf(RESOLUTIONS),
        metadata={"description": "raw, 1m, 5m or 1h average; default: raw up to 6h, 1m up to 24h, 5m up to 7d, 1h"},
    )


class Point(ma.Schema):
    ts = ma.fields.String()
    value = ma.fields.Float()


class SeriesSchema(ma.Schema):
    labels = ma.fields.Dict()
    datapoints = ma.fields.List(ma.fields.Nested(Point))


class QueryResult(ma.Schema):
    metric = ma.fields.String()
    host_id = ma.fields.String()
    range = ma.fields.String()
    labels = ma.fields.Dict()
    datapoints = ma.fields.List(ma.fields.Nested(Point))
    series = ma.fields.List(ma.fields.Nested(SeriesSchema))
    aggregation = ma.fields.String(allow_none=True)
    resolution = ma.fields.String(metadata={"description": "the step between points: 5s (raw), 1m, 5m or 1h"})
    tier = ma.fields.String(metadata={"description": "raw for raw samples, longterm for downsampled ones (1m, 5m, 1h)"})


class CatalogEntry(ma.Schema):
    name = ma.fields.String()
    unit = ma.fields.String()
    description = ma.fields.String()
    labels = ma.fields.List(ma.fields.String())


class CatalogSchema(ma.Schema):
    metrics = ma.fields.List(ma.fields.Nested(CatalogEntry))


@blp.route("/catalog")
class Catalog(MethodView):
    @blp.response(200, CatalogSchema)
    def get(self):
        """Every metric name the API knows, with its unit, description and labels."""
        return {"metrics": catalog_listing()}


@blp.route("/query")
class Query(MethodView):
    @blp.arguments(QueryArgs(), location="query")  # an instance: not made again for every request
    @blp.response(200, QueryResult)
    def get(self, args):
        """Datapoints of one metric of one host over a range; ``resolution`` says the step used."""
        # A host known a moment ago is taken as known (KNOWN_HOST_CACHE_S): a deleted one's
        # history stays readable that much longer, as a discovered host's always is.
        known_hosts = lookup_cache("known_hosts", "KNOWN_HOST_CACHE_S")
        if not known_hosts.get(args["host_id"]):
            known = db.session.execute(db.select(Host.pk).filter_by(id=args["host_id"])).first()
            if not known and not discovered_hosts(current_app.extensions["prometheus"], args["host_id"]):
                known = db.session.execute(db.select(Host.id).order_by(Host.pk).limit(50)).scalars().all()
                raise NotFound(f"no host {args['host_id']}", {"host_id": args["host_id"], "valid": known})
            known_hosts.put(args["host_id"], True)
        series, resolution, tier = fetch_series(
            current_app.extensions["tiers"],
            args["metric"],
            args["host_id"],
            args["range"],
            args["labels"],
            resolution=args.get("resolution"),
        )
        if len(series) == 1:
            datapoints, aggregation = series[0]["datapoints"], None
        else:  # several GPUs/mounts/NICs and no label chosen: their mean, each one in `series`
            datapoints, aggregation = _mean(series), "avg" if series else None
        return fast_json(
            {
                "metric": args["metric"],
                "host_id": args["host_id"],
                "range": args["range"],
                "labels": args["labels"],
                "datapoints": datapoints,
                "series": series,
                "aggregation": aggregation,
                "resolution": resolution,
                "tier": tier,
            }
        )


def _mean(series: list[dict]) -> list[dict]:
    by_ts: dict[str, list[float]] = {}
    for s in series:
        for p in s["datapoints"]:
            by_ts.setdefault(p["ts"], []).append(p["value"])
    return [{"ts": ts, "value": sum(v) / len(v)} for ts, v in sorted(by_ts.items())]
