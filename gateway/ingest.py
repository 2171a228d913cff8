"""Push ingest (§8.7): the views where agents push their points and heartbeats.

A point is checked on its own (``gateway.point_checks``), the valid ones are
remote-written into the ``fleet:`` layer of Prometheus before the answer
(``gateway.point_store``), and the push notes its host alive
(``gateway.last_seen``). The gateway stores no points itself.
"""

from __future__ import annotations

import json
import time

import marshmallow as ma
import orjson
from flask import current_app, g, request
from flask.views import MethodView

from gateway.agents import AgentSettingsSchema, agent_settings
from gateway.auth import AGENT, access
from gateway.db import db
from gateway.errors import ApiError, Blueprint
from gateway.hosts import HOST_ID
from gateway.point_checks import check_points, in_order
from gateway.process_masking import PolicySchema, masking, policy
from gateway.schemas import Pattern, fast_json

blp = Blueprint("ingest", __name__, url_prefix="/api/v1/ingest", description="Metric points pushed by agents")

MAX_ERRORS_LISTED = 100


class IngestPointSchema(ma.Schema):
    metric = ma.fields.String(required=True, metadata={"example": "cpu.utilization"})
    ts = ma.fields.String(required=True, metadata={"example": "2025-11-13T08:50:00Z"})
    value = ma.fields.Float(required=True, metadata={"example": 85.2})
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


class IngestSchema(ma.Schema):
    host_id = ma.fields.String(required=True, validate=Pattern(HOST_ID.pattern), metadata={"example": "host-001"})
    hostname = ma.fields.String(metadata={"description": "used when the host is discovered by this push"})
    agent_version = ma.fields.String()
    metrics = ma.fields.List(ma.fields.Nested(IngestPointSchema), required=True)


class HeartbeatSchema(ma.Schema):
    host_id = ma.fields.String(required=True, validate=Pattern(HOST_ID.pattern))
    hostname = ma.fields.String()
    agent_version = ma.fields.String()
    has_gpu = ma.fields.Boolean()


class AgentAnswerSchema(AgentSettingsSchema):
    process_masking = ma.fields.Nested(PolicySchema, metadata={"description": "names the agent must mask"})


class HeartbeatAnswer(HeartbeatSchema):
    config = ma.fields.Nested(AgentAnswerSchema, metadata={"description": "settings the agent must apply"})


class PointError(ma.Schema):
    index = ma.fields.Integer()
    reason = ma.fields.String()


class IngestResult(ma.Schema):
    accepted = ma.fields.Integer(metadata={"description": "points Prometheus now holds (resent ones: once)"})
    rejected = ma.fields.Integer()
    errors = ma.fields.List(ma.fields.Nested(PointError))


def _body() -> dict:
    # Read with orjson and checked by hand, not by a schema: see gateway/point_checks.py.
    request.max_content_length = current_app.config["INGEST_MAX_BODY_BYTES"]
    data = request.get_data(cache=False)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            # NaN and Infinity are not JSON, yet some clients write them: read them, so the
            # points that hold them are refused one by one and their neighbours still stored.
            body = json.loads(data)
        except (ValueError, RecursionError):  # orjson stops at 1,024 levels, json at Python's stack
            raise ApiError(f"malformed JSON: {exc}", {"body": "malformed"}) from None
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", {"body": type(body).__name__})
    host_id = body.get("host_id")
    if not isinstance(host_id, str) or not HOST_ID.match(host_id):
        raise ApiError("host_id: letters, digits, '.', '_', '-', at most 64", {"host_id": str(host_id)[:80]})
    return body


@blp.route("/metrics")
class IngestMetrics(MethodView):
    @access(AGENT)
    @blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": IngestSchema}}})
    @blp.response(200, IngestResult)
    def post(self):
        """Store an agent's points; each is checked on its own and the valid ones are stored."""
        config, counters = current_app.config, current_app.extensions["request_metrics"]
        counters.ingest_requests.inc()
        body = _body()
        points = body.get("metrics")
        if not isinstance(points, list):
            raise ApiError("metrics: a list of points is required", {"metrics": type(points).__name__})
        limit = config["INGEST_MAX_POINTS"]
        if len(points) > limit:
            raise ApiError(f"at most {limit} points per request", {"points": len(points)}, status=413)
        host_id = body["host_id"]
        budgets, scope = current_app.extensions["key_budgets"], g.principal.scope
        new_host = budgets.admit_host(scope, host_id)
        valid, errors = check_points(
            host_id,
            points,
            current_app.extensions["series_budgets"].setdefault(host_id, set()),
            config["INGEST_SERIES_PER_HOST"],
            int(time.time() * 1000),
            config["INGEST_PAST_S"] * 1000,
            config["INGEST_FUTURE_S"] * 1000,
            masking(),
        )
        for labels in budgets.admit_series(scope, list(valid), new_host):
            reason = f"series budget: this API key has {budgets.series_budget(scope)} series"
            errors.extend({"index": s[2], "reason": reason} for s in valid.pop(labels))
        budgets.record()
        current_app.extensions["last_seen"].note(body)
        db.session.commit()  # the key's new hosts and series, if noting the push wrote nothing
        series, conflicts = in_order(valid)
        errors += conflicts
        if series:
            current_app.extensions["point_store"].store(series, errors, counters)
        rejected = len(errors)
        counters.ingest_points.labels("accepted").inc(len(points) - rejected)
        if rejected:
            counters.ingest_points.labels("rejected").inc(rejected)
            counters.ingest_errors.labels("invalid_point").inc(rejected)
        errors.sort(key=lambda e: e["index"])
        result = {"accepted": len(points) - rejected, "rejected": rejected, "errors": errors[:MAX_ERRORS_LISTED]}
        if points and not rejected < len(points):
            raise ApiError(f"no valid point: {errors[0]['reason']}", result)
        return fast_json(result)


@blp.route("/heartbeat")
class Heartbeat(MethodView):
    @access(AGENT)
    @blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": HeartbeatSchema}}})
    @blp.response(200, HeartbeatAnswer)
    def post(self):
        """An agent's alive signal (REQ-AGENT-006): the host's last_seen_at; a new host is discovered.

        The answer's ``config`` is what admins set at /api/v1/agents/config (REQ-AGENT-003).
        """
        body = _body()
        budgets = current_app.extensions["key_budgets"]
        budgets.admit_host(g.principal.scope, body["host_id"])
        budgets.record()
        current_app.extensions["last_seen"].note(body, force=True)  # commits the key's new host with it
        echo = {k: body[k] for k in ("host_id", "hostname", "agent_version") if isinstance(body.get(k), str)}
        return {**echo, "config": {**agent_settings(), "process_masking": policy()}}
