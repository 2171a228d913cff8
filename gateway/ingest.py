"""Push ingest (§8.7): agents' JSON points, checked one by one, remote-written into the ``fleet:`` layer.

The gateway stores nothing itself: a request is answered 2xx only after
Prometheus took its valid points, and 503 + Retry-After when Prometheus does
not answer, so the agent keeps them and sends them again. Sending again is
safe (REQ-INGEST-005): Prometheus keeps one sample per series and timestamp,
and drops a resent identical sample without storing it twice.

The views read the body with orjson and check points in a plain loop, not
through marshmallow: a batch of 10,000 points is checked in a few
milliseconds that way, and per-point errors must not fail the whole batch.

Requests that arrive while a remote write is in flight share the next one
(``GroupWriter``, REQ-INGEST-004), and pushes note their host's last-seen
time for one batched UPDATE every 15 s: with agents' 100-point batches, the
fixed cost of each request is what limits the rate, not its points.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import re
import threading
import time
from datetime import UTC, datetime

import marshmallow as ma
import orjson
from flask import current_app, request
from flask.views import MethodView
from sqlalchemy import bindparam, or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.agents import AgentSettingsSchema, agent_settings
from gateway.auth import AGENT, access
from gateway.db import Host, add_with_id, db
from gateway.errors import ApiError, Blueprint, Conflict, Unavailable
from gateway.remote_write import (
    GroupWriter,
    Refused,
    RemoteWriter,
    WriteFailed,
    encode_labels,
    encode_timeseries,
)
from gateway.schemas import fast_json
from rules_compiler.catalog import UnknownMetric, resolve

log = logging.getLogger(__name__)

blp = Blueprint("ingest", __name__, url_prefix="/api/v1/ingest", description="Metric points pushed by agents")

DEFAULTS = {
    "INGEST_MAX_BODY_BYTES": 4 * 1024 * 1024,
    "INGEST_MAX_POINTS": 20_000,  # per request
    "INGEST_MAX_INFLIGHT_POINTS": 100_000,  # per worker process; beyond it: 503 (backpressure)
    "INGEST_SERIES_PER_HOST": 5_000,  # label budget: distinct series one host may create
    "INGEST_WRITE_BATCH": 5_000,  # samples per remote-write request
    "INGEST_WRITE_TIMEOUT_S": 5.0,
    "INGEST_PAST_S": 3600,  # ts window [now - past, now + future] (§11.2)
    "INGEST_FUTURE_S": 300,
    "HEARTBEAT_EVERY_S": 15,  # how often a worker writes its pushing hosts' last_seen_at, all in one go
    "PUSHER_RECHECK_S": 60,  # how long a worker trusts that a host id is a pushing host's
}
PUSH = "push"  # Host.exporter of a host that pushes: nothing to scrape
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
RESERVED = {"host_id", "job", "instance"}
MAX_LABELS, MAX_VALUE_CHARS = 10, 128
MAX_ERRORS_LISTED = 100


def _setting(name: str):
    return current_app.config.get(name, DEFAULTS[name])


class IngestState:
    """What one worker process keeps between requests: points in flight, label budgets, heartbeats."""

    def __init__(self, config):
        url = config.get("REMOTE_WRITE_URL") or config["PROMETHEUS_URL"].rstrip("/") + "/api/v1/write"
        self.writer = RemoteWriter(url, config.get("INGEST_WRITE_TIMEOUT_S", DEFAULTS["INGEST_WRITE_TIMEOUT_S"]))
        self.group = GroupWriter(self.writer, 2 * config.get("INGEST_WRITE_BATCH", DEFAULTS["INGEST_WRITE_BATCH"]))
        self.lock = threading.Lock()
        self.in_flight = 0
        self.series: dict[str, set] = {}
        self.pushers: dict[str, float] = {}  # host id -> when the DB said it is a pushing host (monotonic)
        self.seen: dict[str, datetime] = {}  # host id -> its latest push, not yet written
        self.flushed_at, self.pid = time.monotonic(), os.getpid()


@blp.record_once
def _state(setup) -> None:
    setup.app.extensions["ingest"] = IngestState(setup.app.config)


class IngestPointSchema(ma.Schema):
    metric = ma.fields.String(required=True, metadata={"example": "cpu.utilization"})
    ts = ma.fields.String(required=True, metadata={"example": "2025-11-13T08:50:00Z"})
    value = ma.fields.Float(required=True, metadata={"example": 85.2})
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


class IngestSchema(ma.Schema):
    host_id = ma.fields.String(required=True, metadata={"example": "host-001"})
    hostname = ma.fields.String(metadata={"description": "used when the host is discovered by this push"})
    agent_version = ma.fields.String()
    metrics = ma.fields.List(ma.fields.Nested(IngestPointSchema), required=True)


class HeartbeatSchema(ma.Schema):
    host_id = ma.fields.String(required=True)
    hostname = ma.fields.String()
    agent_version = ma.fields.String()
    has_gpu = ma.fields.Boolean()


class HeartbeatAnswer(HeartbeatSchema):
    config = ma.fields.Nested(AgentSettingsSchema, metadata={"description": "settings the agent must apply"})


class PointError(ma.Schema):
    index = ma.fields.Integer()
    reason = ma.fields.String()


class IngestResult(ma.Schema):
    accepted = ma.fields.Integer(metadata={"description": "points Prometheus now holds (resent ones: once)"})
    rejected = ma.fields.Integer()
    errors = ma.fields.List(ma.fields.Nested(PointError))


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


def check_points(host_id: str, points: list, budget: set, max_series: int, now_ms: int, past_ms: int, future_ms: int):
    """Valid points grouped by series, ``{labels: [(ts_ms, value, index), …]}``, and the others' ``{index, reason}``."""
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
            labels = _series_labels(host_id, record, _labels_of(point, implied) if "labels" in point else implied)
            if labels not in budget:
                if len(budget) >= max_series:
                    raise ValueError(f"label budget: host {host_id} has {max_series} series already")
                budget.add(labels)
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


def _in_order(valid: dict) -> tuple[list, list]:
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


def _batches(series: list, size: int):
    """Runs of whole series (a longer one cut) of about ``size`` samples: one remote-write request each."""
    batch, count = [], 0
    for labels, samples in series:
        for start in range(0, len(samples), size):
            part = samples[start : start + size]
            batch.append((labels, part))
            count += len(part)
            if count >= size:
                yield batch
                batch, count = [], 0
    if batch:
        yield batch


def _encoded(batch: list) -> list[bytes]:
    return [encode_timeseries(labels, samples) for labels, samples in batch]


def store(writer: RemoteWriter, batch: list, errors: list) -> None:
    """Remote-write ``batch`` of ``(labels, samples)`` alone; samples Prometheus refuses (4xx) go to ``errors``.

    Raises:
        WriteFailed: Prometheus did not answer or failed (5xx): nothing may be acknowledged.
    """
    try:
        writer.write(_encoded(batch))
    except WriteFailed as exc:
        if exc.retry:
            raise
        halve(writer, batch, errors, exc)


def halve(writer: RemoteWriter, batch: list, errors: list, refusal: WriteFailed) -> None:
    """``batch`` was refused (4xx): store it in halves until the culprits are alone, and report those."""
    # Prometheus 2.x refuses a whole request for one bad sample (e.g. older than its
    # out-of-order window): halve until the culprits are alone, store the rest.
    single = [(labels, [s]) for labels, samples in batch for s in samples]
    if len(single) == 1:
        errors.append({"index": single[0][1][0][2], "reason": f"refused by the store: {refusal}"[:300]})
        return
    middle = len(single) // 2
    store(writer, single[:middle], errors)
    store(writer, single[middle:], errors)


def heartbeat(state: IngestState, body: dict, force: bool = False) -> None:
    """Note that ``host_id``'s agent is alive; a host seen for the first time is added to the inventory.

    A push from a host this worker knows as a pushing one only notes the time:
    the notes of every host are written together every HEARTBEAT_EVERY_S, in
    one transaction, instead of one commit per push (a fifth of the ingest
    path's time with 500 agents). The status judges silence over 2 min, so
    15 s late costs nothing. A heartbeat (``force``) is written at once.
    """
    host_id = body["host_id"]
    now = time.monotonic()
    if not force and now - state.pushers.get(host_id, -math.inf) < _setting("PUSHER_RECHECK_S"):
        with state.lock:
            state.seen[host_id] = datetime.now(UTC)
        _write_seen(state, now)
        return
    known = db.session.execute(db.select(Host.exporter).filter_by(id=host_id)).first()
    if known is not None and known.exporter != PUSH:
        # Its series come from the scrape: pushed ones would collide with them, and any
        # agent key could otherwise rewrite a pulled host's liveness.
        raise Conflict(f"host {host_id} is in the inventory as a scraped host, not pushed", {"host_id": host_id})
    fields = {}
    if isinstance(body.get("agent_version"), str):
        fields["agent_version"] = body["agent_version"][:64]
    if isinstance(body.get("has_gpu"), bool):
        fields["has_gpu"] = body["has_gpu"]
    for _attempt in range(2):
        host = db.session.execute(db.select(Host).filter_by(id=host_id)).scalar_one_or_none()
        if host is None:
            hostname = body.get("hostname") if isinstance(body.get("hostname"), str) else host_id
            host = add_with_id(Host(hostname=hostname[:253], exporter=PUSH, tags={}), host_id)
            log.info("host discovered by its first push", extra={"host_id": host_id})
        host.last_seen_at = datetime.now(UTC)
        for key, value in fields.items():
            setattr(host, key, value)
        try:
            db.session.commit()
            break
        except IntegrityError:  # another worker discovered it at the same moment
            db.session.rollback()
    state.pushers[host_id] = now


def _write_seen(state: IngestState, now: float) -> None:
    """Every noted push's time in one UPDATE, once every HEARTBEAT_EVERY_S."""
    every = _setting("HEARTBEAT_EVERY_S")
    with state.lock:
        if state.pid != os.getpid():
            # Forked from the master with the rest: a phase of its own keeps the workers' UPDATEs apart.
            state.pid, state.flushed_at = os.getpid(), now - random.uniform(0, every)
        if now - state.flushed_at < every or not state.seen:
            return
        seen, state.seen, state.flushed_at = state.seen, {}, now
    hosts = Host.__table__
    try:
        db.session.execute(
            update(hosts)
            # Never backwards: another worker may have written a later push or heartbeat already.
            .where(
                hosts.c.id == bindparam("host"),
                or_(hosts.c.last_seen_at.is_(None), hosts.c.last_seen_at < bindparam("at")),
            )
            .values(last_seen_at=bindparam("at")),
            # In one order in every worker: two UPDATEs of the same hosts never wait on each other (PostgreSQL).
            [{"host": host_id, "at": at} for host_id, at in sorted(seen.items())],
        )
        db.session.commit()
    except SQLAlchemyError as exc:
        # The points are what matters here; the next write carries newer times anyway.
        db.session.rollback()
        log.warning("last_seen_at of %d pushing hosts not written: %s", len(seen), exc)


def _body() -> dict:
    request.max_content_length = _setting("INGEST_MAX_BODY_BYTES")
    data = request.get_data(cache=False)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            # NaN and Infinity are not JSON, yet some clients write them: read them, so the
            # points that hold them are refused one by one and their neighbours still stored.
            body = json.loads(data)
        except ValueError:
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
    @blp.doc(requestBody={"content": {"application/json": {"schema": IngestSchema}}})
    @blp.response(200, IngestResult)
    def post(self):
        """Store an agent's points; each is checked on its own and the valid ones are stored."""
        state, counters = current_app.extensions["ingest"], current_app.extensions["request_metrics"]
        counters.ingest_requests.inc()
        body = _body()
        points = body.get("metrics")
        if not isinstance(points, list):
            raise ApiError("metrics: a list of points is required", {"metrics": type(points).__name__})
        limit = _setting("INGEST_MAX_POINTS")
        if len(points) > limit:
            raise ApiError(f"at most {limit} points per request", {"points": len(points)}, status=413)
        host_id = body["host_id"]
        heartbeat(state, body)
        valid, errors = check_points(
            host_id,
            points,
            state.series.setdefault(host_id, set()),
            _setting("INGEST_SERIES_PER_HOST"),
            int(time.time() * 1000),
            _setting("INGEST_PAST_S") * 1000,
            _setting("INGEST_FUTURE_S") * 1000,
        )
        valid, conflicts = _in_order(valid)
        errors += conflicts
        if valid:
            _store_bounded(state, counters, valid, errors)
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


def _store_bounded(state: IngestState, counters, valid: list, errors: list) -> None:
    total = sum(len(samples) for _, samples in valid)
    with state.lock:
        refused = state.in_flight + total > _setting("INGEST_MAX_INFLIGHT_POINTS")
        if not refused:
            state.in_flight += total
    if refused:
        counters.ingest_points.labels("refused").inc(total)
        counters.ingest_errors.labels("backpressure").inc()
        raise Unavailable("ingest is at capacity; send again later", {"points": total}, headers={"Retry-After": "1"})
    stored = 0
    try:
        for batch in _batches(valid, _setting("INGEST_WRITE_BATCH")):
            size = sum(len(samples) for _, samples in batch)
            try:
                state.group.write(_encoded(batch), size)
            except Refused:
                store(state.writer, batch, errors)  # refused with others' points: alone, then halved if need be
            except WriteFailed as exc:
                if exc.retry:
                    raise
                halve(state.writer, batch, errors, exc)  # refused, alone: its own points are to blame
            stored += size
    except WriteFailed as exc:
        counters.ingest_points.labels("failed").inc(total - stored)
        counters.ingest_errors.labels("store_unavailable").inc()
        log.warning("remote write failed: %s", exc)
        raise Unavailable(
            "the metric store does not answer; nothing is lost if you send the same request again",
            {"reason": str(exc)[:300], "stored_before_failure": stored},
            headers={"Retry-After": "5"},
        ) from None
    finally:
        with state.lock:
            state.in_flight -= total


@blp.route("/heartbeat")
class Heartbeat(MethodView):
    @access(AGENT)
    @blp.doc(requestBody={"content": {"application/json": {"schema": HeartbeatSchema}}})
    @blp.response(200, HeartbeatAnswer)
    def post(self):
        """An agent's alive signal (REQ-AGENT-006): the host's last_seen_at; a new host is discovered.

        The answer's ``config`` is what admins set at /api/v1/agents/config (REQ-AGENT-003).
        """
        body = _body()
        heartbeat(current_app.extensions["ingest"], body, force=True)
        echo = {k: body[k] for k in ("host_id", "hostname", "agent_version") if isinstance(body.get(k), str)}
        return {**echo, "config": agent_settings()}
