"""The gateway's own health: JSON logs, request metrics, /health, /ready, /metrics (§14).

Under gunicorn every worker is a process: request metrics then go through
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
``fleetwatch-gateway``) so /metrics adds up all workers, whichever answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from datetime import UTC, datetime

import marshmallow as ma
from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.alert_channels import channel_warnings
from gateway.auth import PUBLIC, access
from gateway.db import AlertRuleRow, Host, configured_secret, db
from gateway.errors import Blueprint, Forbidden, Unauthorized
from gateway.job_metrics import JobCollector

blp = Blueprint("health", __name__, description="Liveness, readiness and the gateway's own metrics")

STANDARD_LOG_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, service, message and any ``extra`` fields (§14.2)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "service": "gateway",
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in STANDARD_LOG_FIELDS}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestMetrics:
    """api_requests_total, api_latency_seconds and db_query_duration_seconds, shared by all workers."""

    def __init__(self, app: Flask):
        self.requests = Counter(
            "api_requests_total",
            "API requests by endpoint and status.",
            ["endpoint", "method", "status"],
            registry=None,
        )
        self.latency = Histogram(
            "api_latency_seconds",
            "API request latency.",
            ["endpoint"],
            registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.db_latency = Histogram(
            "db_query_duration_seconds",
            "Time spent in DB statements.",
            registry=None,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )
        # §14.1's ingest counters; "refused" points are those turned away by backpressure (503).
        self.ingest_requests = Counter("ingest_requests_total", "Ingest requests received.", registry=None)
        self.ingest_points = Counter(
            "ingest_datapoints_total",
            "Pushed points by result: accepted, rejected (invalid), refused (backpressure), failed (store down).",
            ["result"],
            registry=None,
        )
        self.ingest_errors = Counter("ingest_errors_total", "Ingest failures by reason.", ["reason"], registry=None)
        self.collectors = (
            self.requests,
            self.latency,
            self.db_latency,
            self.ingest_requests,
            self.ingest_points,
            self.ingest_errors,
        )
        app.before_request(self._start)
        app.after_request(self._finish)

    def _start(self) -> None:
        g.started = time.perf_counter()

    def _finish(self, response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        self.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        self.latency.labels(endpoint).observe(elapsed)
        if "rate_limit_remaining" in g and "X-RateLimit-Remaining" not in response.headers:
            response.headers["X-RateLimit-Remaining"] = str(g.rate_limit_remaining)
        return response

    def watch_db(self, engine) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn, *_):
            conn.info.setdefault("t0", []).append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn, *_):
            self.db_latency.observe(time.perf_counter() - conn.info["t0"].pop())


class HostInfoCollector:
    """``fleet_host_info{host_id, <tags>} 1`` per host: tags reach PromQL by a join, not by relabelling series."""

    def collect(self):
        hosts = db.session.execute(db.select(Host.id, Host.hostname, Host.tags)).all()
        tag_keys = sorted({k for _, _, tags in hosts for k in (tags or {})})
        info = GaugeMetricFamily(
            "fleet_host_info", "A monitored host and its tags; always 1.", labels=["host_id", "hostname", *tag_keys]
        )
        for host_id, hostname, tags in hosts:
            info.add_metric([host_id, hostname, *((tags or {}).get(k, "") for k in tag_keys)], 1)
        yield info
        # For the "Agent Silent" rule: time() - this > 120 means a pushing agent went quiet.
        seen = GaugeMetricFamily(
            "fleet_host_last_seen_timestamp_seconds",
            "When the host's agent last pushed or beat, Unix time.",
            labels=["host_id"],
        )
        for host_id, last_seen in db.session.execute(
            db.select(Host.id, Host.last_seen_at).where(Host.last_seen_at.is_not(None))
        ):
            seen.add_metric([host_id], (last_seen if last_seen.tzinfo else last_seen.replace(tzinfo=UTC)).timestamp())
        yield seen


class HealthSchema(ma.Schema):
    status = ma.fields.String(metadata={"example": "ok"})


class ReadySchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "ready or not ready"})
    db = ma.fields.String(metadata={"description": "ok, or down: <why>"})
    prometheus = ma.fields.String(metadata={"description": "ok or down"})
    undeliverable_channels = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.String()),
        metadata={"description": "rule id: why its channels cannot deliver (listed only when some cannot)"},
    )


@blp.route("/health")
class Health(MethodView):
    @access(PUBLIC)
    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness: the process answers."""
        return {"status": "ok"}


@blp.route("/ready")
class Ready(MethodView):
    @access(PUBLIC)
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ReadySchema, description="the DB or Prometheus does not answer")
    def get(self):
        """Readiness: the DB and Prometheus answer; 503 says which does not. Undeliverable channels are listed."""
        checks, undeliverable = {}, {}
        try:
            rules = db.session.execute(db.select(AlertRuleRow.id, AlertRuleRow.channels).filter_by(enabled=True))
            # Not a reason to be unready: the rules still fire and their events are recorded.
            undeliverable = {r.id: w for r in rules if (w := channel_warnings(r.channels))}
            checks["db"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any DB failure means "not ready"
            checks["db"] = f"down: {exc.__class__.__name__}"
        checks["prometheus"] = "ok" if current_app.extensions["prometheus"].ready() else "down"
        ready = all(v == "ok" for v in checks.values())
        body = {"status": "ready" if ready else "not ready", **checks}
        if undeliverable:
            body["undeliverable_channels"] = undeliverable
        return body, 200 if ready else 503


def _is_loopback(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:  # a unix socket's peer, or nothing
        return False
    # ::ffff:127.0.0.1 is how an IPv4 loopback caller reaches a dual-stack listener.
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _check_scraper() -> None:
    """/metrics lists every host and tag: a bearer scrape token when one is set, else loopback callers only."""
    token = configured_secret("METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("/metrics wants the scrape token", {"header": "Authorization: Bearer <token>"})
    elif not _is_loopback(request.remote_addr):
        raise Forbidden(
            "/metrics answers only loopback callers unless FLEETWATCH_METRICS_TOKEN is set",
            {"remote_addr": request.remote_addr},
        )


@blp.route("/metrics")
class Metrics(MethodView):
    @access(PUBLIC)  # Prometheus is no user: it proves itself with the scrape token
    @blp.doc(
        responses={"200": {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {"schema": {}}}}}
    )
    def get(self):
        """The gateway's own metrics (all workers) and fleet_host_info, for Prometheus to scrape.

        With FLEETWATCH_METRICS_TOKEN set: `Authorization: Bearer <that token>` (401 without); unset: loopback
        callers only (403 for others).
        """
        _check_scraper()
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(registry)
        else:
            for metric in current_app.extensions["request_metrics"].collectors:
                registry.register(metric)
        registry.register(HostInfoCollector())
        registry.register(JobCollector())
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
