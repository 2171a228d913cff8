"""Alerts (§8.5): rules compiled into Prometheus and Alertmanager, events from Alertmanager, acknowledgement.

A rule write answers only once the rule is live in Prometheus: the handler
holds the deploy lock, changes the rows, compiles every rule, and installs
them through ``rules_compiler.deploy``; the DB commits only if that worked.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import marshmallow as ma
import orjson
import urllib3
from flask import current_app, g, request
from flask.views import MethodView

from gateway.auth import PUBLIC, access, audit
from gateway.db import AlertEvent, AlertRuleRow, Secret, add_with_id, db, secret, utcnow
from gateway.errors import ApiError, Blueprint, Conflict, NotFound, Unauthorized, Unavailable
from gateway.schemas import Page, PageArgs, UtcDateTime, page
from rules_compiler.alertmanager import Delivery, check_channels, render_alertmanager_config
from rules_compiler.alerts import (
    SEVERITIES,
    STARTER_RULES,
    RuleInvalid,
    format_duration,
    parse_channel,
    parse_duration,
    parse_expression,
    parse_scope,
    render_alert_rules,
    scope_as_json,
    to_rule,
)

log = logging.getLogger(__name__)

blp = Blueprint("alerts", __name__, url_prefix="/api/v1/alerts", description="Alert rules, events, acknowledgement")

STATES = ("firing", "acknowledged", "resolved")


class RuleSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    expression = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=2000),
        metadata={"example": "cpu.utilization > 90 OR mem.used_pct > 90"},
    )
    duration = ma.fields.String(load_default="5m", metadata={"description": "static, or 30s / 10m / 1h / 1d"})
    scope = ma.fields.Raw(load_default=dict, metadata={"example": {"tags": {"role": "web", "zone": "!=us-east"}}})
    channels = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(max=2000)),
        load_default=list,
        validate=ma.validate.Length(max=20),
        metadata={"example": ["email:ops@example.com", "slack:https://hooks.slack.com/services/T/B/X#ops"]},
    )
    severity = ma.fields.String(load_default="warning", validate=ma.validate.OneOf(SEVERITIES))
    enabled = ma.fields.Boolean(load_default=True)
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)


class RuleUpdateSchema(RuleSchema):
    """Any subset of a rule's fields (loaded with ``partial=True``: nothing is required or defaulted)."""


class RuleListSchema(Page):
    rules = ma.fields.List(ma.fields.Nested(RuleSchema))


class ChangeSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String()


class EventArgs(PageArgs):
    state = ma.fields.String(validate=ma.validate.OneOf(STATES))
    host_id = ma.fields.String()
    rule_id = ma.fields.String()
    since = ma.fields.AwareDateTime(default_timezone=UTC, metadata={"description": "ISO 8601; events started since"})


class EventSchema(ma.Schema):
    id = ma.fields.String()
    rule_id = ma.fields.String()
    rule_name = ma.fields.String()
    host_id = ma.fields.String(allow_none=True)
    state = ma.fields.String()
    severity = ma.fields.String()
    value = ma.fields.Float(allow_none=True)
    summary = ma.fields.String()
    labels = ma.fields.Dict()
    started_at = UtcDateTime()
    ended_at = UtcDateTime(allow_none=True)
    acknowledged_by = ma.fields.String(allow_none=True)
    acknowledged_at = UtcDateTime(allow_none=True)


class EventListSchema(Page):
    alerts = ma.fields.List(ma.fields.Nested(EventSchema))


class AckSchema(ma.Schema):
    user = ma.fields.Email(metadata={"description": "who acknowledges; the logged-in user is what is recorded"})
    comment = ma.fields.String(validate=ma.validate.Length(max=500), load_default="")


class HistoryEntry(ma.Schema):
    """Seed 000's AlertEvent, with the spec's names beside it."""

    id = ma.fields.String()
    ruleId = ma.fields.String(attribute="rule_id")
    nodeId = ma.fields.String(attribute="host_id", allow_none=True)
    value = ma.fields.Float(allow_none=True)
    firedAt = UtcDateTime(attribute="started_at")
    resolvedAt = UtcDateTime(attribute="ended_at", allow_none=True)
    rule_name = ma.fields.String()
    severity = ma.fields.String()
    state = ma.fields.String()


class HistoryListSchema(Page):
    history = ma.fields.List(ma.fields.Nested(HistoryEntry))


def _get_rule(rule_id: str) -> AlertRuleRow:
    row = db.session.execute(db.select(AlertRuleRow).filter_by(id=rule_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no alert rule {rule_id}", {"id": rule_id})
    return row


def _get_event(event_id: str) -> AlertEvent:
    row = db.session.execute(db.select(AlertEvent).filter_by(id=event_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no alert event {event_id}", {"id": event_id})
    return row


def _normalise(body: dict) -> dict:
    """The fields as they will be stored, after parsing each the way the compiler will.

    Raises:
        RuleInvalid: a field that would not compile (the API answers 400 naming it).
    """
    out = dict(body)
    if "expression" in body:
        out["expression"] = str(parse_expression(body["expression"]))
    if "duration" in body:
        seconds = parse_duration(body["duration"])
        out["duration"] = "static" if seconds == 0 else format_duration(seconds)
    if "scope" in body:
        out["scope"] = scope_as_json(parse_scope(body["scope"]))
    if "channels" in body:
        channels = tuple(parse_channel(c) for c in body["channels"])
        check_channels(channels, delivery())
        out["channels"] = [str(c) for c in channels]
    return out


def delivery() -> Delivery:
    c = current_app.config
    return Delivery(
        events_url=c["GATEWAY_URL"].rstrip("/") + "/api/v1/alerts/webhook",
        events_token=secret("alertmanager-webhook"),
        events_ca_file=c["GATEWAY_CA_FILE"] or "",
        smtp_smarthost=c["SMTP_SMARTHOST"] or "",
        smtp_from=c["SMTP_FROM"],
        smtp_auth_username=c["SMTP_AUTH_USERNAME"] or "",
        smtp_auth_password=c["SMTP_AUTH_PASSWORD"] or "",
        smtp_require_tls=_flag(c["SMTP_REQUIRE_TLS"]),
        group_wait=c["ALERT_GROUP_WAIT"],
        group_interval=c["ALERT_GROUP_INTERVAL"],
        repeat_interval=c["ALERT_REPEAT_INTERVAL"],
        events_group_interval=c["ALERT_EVENTS_GROUP_INTERVAL"],
    )


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def publish() -> None:
    """Compile every rule in the session (committed or not) and install it; call under the deploy lock.

    Raises:
        DeployFailed: nothing changed in Prometheus or Alertmanager.
    """
    rows = db.session.execute(db.select(AlertRuleRow)).scalars().all()
    rules = [to_rule(r) for r in rows if r.enabled]
    revision = secrets.token_hex(6)
    interval = int(current_app.config["ALERT_EVALUATION_INTERVAL_S"])
    current_app.extensions["alert_deployer"].deploy(
        render_alert_rules(rules, interval, revision),
        render_alertmanager_config(rules, delivery()),
        revision,
        len(rules),
    )


def install_rules_on_start() -> None:
    """On a gateway's start: §9's starter set the first time, then install what the DB holds."""
    deployer = current_app.extensions["alert_deployer"]
    with deployer.locked():
        if db.session.get(Secret, "starter-rules") is None:
            channels = [c.strip() for c in current_app.config["ALERT_DEFAULT_CHANNELS"].split(",") if c.strip()]
            for rule_id, name, expression, duration, scope, severity in STARTER_RULES:
                if db.session.execute(db.select(AlertRuleRow.pk).filter_by(id=rule_id)).first() is None:
                    body = _normalise(
                        {"expression": expression, "duration": duration, "scope": scope, "channels": channels}
                    )
                    add_with_id(AlertRuleRow(name=name, severity=severity, enabled=True, **body), rule_id)
            # Kept, so rules an admin deleted do not come back on the next start.
            db.session.add(Secret(name="starter-rules", value="installed"))
        publish()
        db.session.commit()


@blp.route("/rules")
class Rules(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, RuleListSchema)
    def get(self, args):
        """List alert rules."""
        rows, meta = page(db.select(AlertRuleRow).order_by(AlertRuleRow.pk), args, db.session)
        return {"rules": rows, **meta}

    @blp.arguments(RuleSchema)
    @blp.response(201, ChangeSchema)
    def post(self, body):
        """Create a rule (admin); answers once Prometheus evaluates it."""
        fields = _normalise(body)
        with current_app.extensions["alert_deployer"].locked():
            row = add_with_id(AlertRuleRow(**fields))
            publish()
            audit("alert_rule_create", row.id, name=row.name, expression=row.expression)
            db.session.commit()
        return {"id": row.id, "status": "created"}


class RuleBatchSchema(ma.Schema):
    rules = ma.fields.List(ma.fields.Nested(RuleSchema), required=True, validate=ma.validate.Length(min=1, max=5000))


class BatchStatusSchema(ma.Schema):
    ids = ma.fields.List(ma.fields.String())
    status = ma.fields.String()


@blp.route("/rules/batch")
class RuleBatch(MethodView):
    @blp.arguments(RuleBatchSchema)
    @blp.response(201, BatchStatusSchema)
    def post(self, body):
        """Create many rules at once (admin): all or none, with one reload (rules as code, imports)."""
        normalised = []
        for index, rule in enumerate(body["rules"]):
            try:
                normalised.append(_normalise(rule))
            except RuleInvalid as exc:
                exc.details["index"] = index  # which of the batch, so the caller can fix it
                raise
        with current_app.extensions["alert_deployer"].locked():
            rows = [add_with_id(AlertRuleRow(**fields)) for fields in normalised]
            publish()
            audit("alert_rule_create", None, ids=[r.id for r in rows], count=len(rows))
            db.session.commit()
        return {"ids": [r.id for r in rows], "status": "created"}


@blp.route("/rules/<rule_id>")
class RuleById(MethodView):
    @blp.response(200, RuleSchema)
    def get(self, rule_id):
        """One alert rule."""
        return _get_rule(rule_id)

    @blp.arguments(RuleUpdateSchema(partial=True))
    @blp.response(200, ChangeSchema)
    def put(self, body, rule_id):
        """Change a rule (admin; any subset of its fields); answers once Prometheus runs the new version."""
        fields = _normalise(body)
        with current_app.extensions["alert_deployer"].locked():
            row = _get_rule(rule_id)
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            publish()
            audit("alert_rule_update", row.id, **fields)
            db.session.commit()
        return {"id": rule_id, "status": "updated"}

    @blp.response(200, ChangeSchema)
    def delete(self, rule_id):
        """Delete a rule (admin); its open events end."""
        with current_app.extensions["alert_deployer"].locked():
            row = _get_rule(rule_id)
            db.session.delete(row)
            db.session.flush()
            publish()
            for event in _open_events(db.select(AlertEvent).filter_by(rule_id=rule_id)):
                _resolve(event, utcnow())
            audit("alert_rule_delete", rule_id, name=row.name)
            db.session.commit()
        return {"id": rule_id, "status": "deleted"}


@blp.route("/events")
class Events(MethodView):
    @blp.arguments(EventArgs, location="query")
    @blp.response(200, EventListSchema)
    def get(self, args):
        """Alert events, newest first; filter by state, host, rule and start time."""
        reconcile_acknowledged()
        rows, meta = page(_event_query(args), args, db.session)
        return {"alerts": rows, **meta}


@blp.route("/events/<event_id>")
class EventById(MethodView):
    @blp.response(200, EventSchema)
    def get(self, event_id):
        """One alert event."""
        reconcile_acknowledged()
        return _get_event(event_id)


@blp.route("/events/<event_id>/acknowledge")
class Acknowledge(MethodView):
    @blp.arguments(AckSchema)
    @blp.response(200, ChangeSchema)
    def post(self, body, event_id):
        """Acknowledge a firing alert (admin): Alertmanager silences it until it resolves."""
        event = _get_event(event_id)
        if event.state == "resolved":
            raise Conflict(f"{event_id} is already resolved", {"id": event_id, "ended_at": str(event.ended_at)})
        if event.state == "firing":
            who = g.principal.email or g.principal.id
            ttl = timedelta(seconds=float(current_app.config["ALERT_ACK_SILENCE_S"]))
            event.silence_id = current_app.extensions["alertmanager"].silence(
                event.labels, ttl, who, f"{event.id} acknowledged in fleetwatch. {body.get('comment', '')}".strip()
            )
            event.state, event.acknowledged_by, event.acknowledged_at = "acknowledged", who, utcnow()
            audit("alert_acknowledge", event.id, silence_id=event.silence_id, comment=body.get("comment", ""))
            db.session.commit()
        return {"id": event.id, "status": "acknowledged"}


@blp.route("/history")
class History(MethodView):
    @blp.arguments(EventArgs, location="query")
    @blp.response(200, HistoryListSchema)
    def get(self, args):
        """Alert firing history (seed 000's AlertEvent shape), newest first."""
        reconcile_acknowledged()
        rows, meta = page(_event_query(args), args, db.session)
        return {"history": rows, **meta}


@blp.route("/webhook")
class Webhook(MethodView):
    @access(PUBLIC)  # Alertmanager is no user: it proves itself with the bearer token it was configured with
    @blp.response(200, ChangeSchema)
    def post(self):
        """Alertmanager's notifications (webhook receiver): records firing and resolved events."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(token.encode(), secret("alertmanager-webhook").encode()):
            raise Unauthorized("not Alertmanager's token")
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ApiError("expected Alertmanager's webhook payload with an alerts list")
        for alert in payload["alerts"]:
            _record(alert)
        db.session.commit()
        return {"id": payload.get("groupKey", ""), "status": "recorded"}


def _event_query(args: dict):
    q = db.select(AlertEvent).order_by(AlertEvent.started_at.desc(), AlertEvent.pk.desc())
    for key in ("state", "host_id", "rule_id"):
        if key in args:
            q = q.filter(getattr(AlertEvent, key) == args[key])
    if "since" in args:
        q = q.filter(AlertEvent.started_at >= args["since"])
    return q


def _open_events(query) -> list[AlertEvent]:
    return db.session.execute(query.filter(AlertEvent.state != "resolved")).scalars().all()


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _time(text: str | None) -> datetime | None:
    """Alertmanager's RFC 3339 with nanoseconds; its zero time means "not set"."""
    if not text or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).astimezone(UTC)


def _value(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _record(alert: dict) -> None:
    labels = alert.get("labels") or {}
    started = _time(alert.get("startsAt"))
    fingerprint = str(alert.get("fingerprint", ""))[:32]
    if started is None or not fingerprint or "rule_id" not in labels:
        return  # not one of ours
    annotations = alert.get("annotations") or {}
    event = db.session.execute(
        db.select(AlertEvent).filter_by(fingerprint=fingerprint, started_at=started)
    ).scalar_one_or_none()
    if event is None:
        event = add_with_id(
            AlertEvent(
                fingerprint=fingerprint,
                started_at=started,
                state="firing",
                rule_id=labels["rule_id"],
                rule_name=labels.get("rule_name", ""),
                host_id=labels.get("host_id"),
                severity=labels.get("severity", "warning"),
                labels=labels,
            )
        )
    event.value = _value(annotations.get("value"))
    event.summary = str(annotations.get("summary", ""))[:1000]
    if alert.get("status") == "resolved" and event.state != "resolved":
        _resolve(event, _time(alert.get("endsAt")) or utcnow())


def _resolve(event: AlertEvent, at: datetime) -> None:
    event.state, event.ended_at = "resolved", at
    if event.silence_id:
        current_app.extensions["alertmanager"].expire(event.silence_id)


def reconcile_acknowledged() -> None:
    """End acknowledged events whose alert is gone from Alertmanager.

    An acknowledged alert is silenced, and Alertmanager mutes a silenced alert's
    resolution too: the webhook never says it ended. So the gateway asks which
    alerts are still active before it shows events.
    """
    acked = _open_events(db.select(AlertEvent).filter_by(state="acknowledged"))
    if not acked:
        return
    try:
        active = current_app.extensions["alertmanager"].active_fingerprints()
    except Unavailable:
        log.warning("Alertmanager does not answer: acknowledged events stay as they are for now")
        return  # events are still worth reading while Alertmanager is away
    ended = [e for e in acked if e.fingerprint not in active]
    for event in ended:
        _resolve(event, utcnow())
    if ended:
        db.session.commit()


class Alertmanager:
    """The few calls of Alertmanager's v2 API the gateway makes: silences and the active alerts."""

    def __init__(self, url: str, timeout_s: float = 5.0, active_ttl_s: float = 2.0):
        self.url = url.rstrip("/")
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=timeout_s), retries=False)
        # Every read of events asks which acknowledged alerts are still active: one answer
        # serves this worker's reads for a couple of seconds (REQ-API-005's short TTL).
        self._active_ttl_s = active_ttl_s
        self._active: tuple[float, set[str]] | None = None

    def silence(self, labels: dict, ttl: timedelta, created_by: str, comment: str) -> str:
        # An answer about active alerts from before this alert fired would end its event at the next read.
        self._active = None
        now = datetime.now(UTC)
        body = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(labels.items())],
            "startsAt": now.isoformat(),
            "endsAt": (now + ttl).isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        return self._call("POST", "/api/v2/silences", body)["silenceID"]

    def expire(self, silence_id: str) -> None:
        try:
            self._call("DELETE", f"/api/v2/silence/{silence_id}")
        except Unavailable:
            log.warning("could not expire silence %s; it ends by itself", silence_id)

    def active_fingerprints(self) -> set[str]:
        now = time.monotonic()
        if self._active is not None and now - self._active[0] < self._active_ttl_s:
            return self._active[1]
        alerts = self._call("GET", "/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true")
        self._active = (now, {a["fingerprint"] for a in alerts})
        return self._active[1]

    def _call(self, method: str, path: str, body: dict | None = None):
        try:
            r = self._http.request(
                method,
                self.url + path,
                body=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"},
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(
                "Alertmanager does not answer", {"alertmanager": self.url, "reason": exc.__class__.__name__}
            ) from None
        if r.status >= 300:
            raise Unavailable("Alertmanager refused the call", {"status": r.status, "body": r.data[:300].decode()})
        return orjson.loads(r.data) if r.data else None
