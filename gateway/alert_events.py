"""Alert events (§8.5): what Alertmanager reports through its webhook, listed, acknowledged and resolved.

An event is one firing of one rule on one subject: firing → (acknowledged) →
resolved. Acknowledging silences the alert in Alertmanager until it resolves.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import UTC, datetime, timedelta

import marshmallow as ma
from flask import current_app, g, request
from flask.views import MethodView
from sqlalchemy import or_

from gateway import event_log
from gateway.alert_channels import WEBHOOK_PATH, WEBHOOK_SECRET
from gateway.auth import PUBLIC, access, audit
from gateway.db import AlertEvent, AlertSilence, add_with_id, db, secret, utcnow
from gateway.errors import ApiError, Blueprint, Conflict, NotFound, Unauthorized, Unavailable
from gateway.schemas import ChangeSchema, Page, PageArgs, UtcDateTime, page

log = logging.getLogger(__name__)

blp = Blueprint("alert-events", __name__, url_prefix="/api/v1/alerts", description="Alert events, acknowledgement")

STATES = ("firing", "acknowledged", "resolved")


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
    silenced_by = ma.fields.String(
        allow_none=True, metadata={"description": "the silence (maintenance window) that muted its notifications"}
    )


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


def _get_event(event_id: str) -> AlertEvent:
    row = db.session.execute(db.select(AlertEvent).filter_by(id=event_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no alert event {event_id}", {"id": event_id})
    return row


@blp.route("/events")
class Events(MethodView):
    @blp.arguments(EventArgs, location="query")
    @blp.response(200, EventListSchema)
    def get(self, args):
        """Alert events, newest first; filter by state, host, rule and start time."""
        reconcile_with_alertmanager()
        rows, meta = page(_event_query(args), args, db.session)
        return {"alerts": rows, **meta}


@blp.route("/events/<event_id>")
class EventById(MethodView):
    @blp.response(200, EventSchema)
    def get(self, event_id):
        """One alert event."""
        reconcile_with_alertmanager()
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
            event_log.alert_changed(event, silence_id=event.silence_id, comment=body.get("comment") or None)
            db.session.commit()
        return {"id": event.id, "status": "acknowledged"}


@blp.route("/history")
class History(MethodView):
    @blp.arguments(EventArgs, location="query")
    @blp.response(200, HistoryListSchema)
    def get(self, args):
        """Alert firing history (seed 000's AlertEvent shape), newest first."""
        reconcile_with_alertmanager()
        rows, meta = page(_event_query(args), args, db.session)
        return {"history": rows, **meta}


@blp.route(WEBHOOK_PATH.removeprefix("/api/v1/alerts"))
class Webhook(MethodView):
    @access(PUBLIC)  # Alertmanager is no user: it proves itself with the bearer token it was configured with
    @blp.response(200, ChangeSchema)
    def post(self):
        """Alertmanager's notifications (webhook receiver): records firing and resolved events."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(token.encode(), secret(WEBHOOK_SECRET).encode()):
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


def open_events(query) -> list[AlertEvent]:
    """The events of ``query`` (a select of AlertEvent) that have not ended."""
    return db.session.execute(query.filter(AlertEvent.state != "resolved")).scalars().all()


_FRACTION = re.compile(r"(\.\d{6})\d+")


def go_time(text: str | None) -> datetime | None:
    """Go's RFC 3339 with nanoseconds (Alertmanager's, Prometheus's); its zero time means "not set"."""
    if not text or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).astimezone(UTC)


def _value(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _record(alert: dict) -> AlertEvent | None:
    """The event of one alert of Alertmanager's (webhook or v2 API shape), made or brought up to date."""
    labels = alert.get("labels") or {}
    started = go_time(alert.get("startsAt"))
    fingerprint = str(alert.get("fingerprint", ""))[:32]
    if started is None or not fingerprint or "rule_id" not in labels:
        return None  # not one of ours
    annotations = alert.get("annotations") or {}
    event = db.session.execute(
        db.select(AlertEvent).filter_by(fingerprint=fingerprint, started_at=started)
    ).scalar_one_or_none()
    new = event is None
    if new:
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
    if new:
        event_log.alert_changed(event)
    if alert.get("status") == "resolved" and event.state != "resolved":
        resolve(event, go_time(alert.get("endsAt")) or utcnow())
    return event


def resolve(event: AlertEvent, at: datetime) -> None:
    """End ``event`` at ``at``; its acknowledgement's silence ends with it."""
    event.state, event.ended_at = "resolved", at
    event_log.alert_changed(event)
    if event.silence_id:
        current_app.extensions["alertmanager"].expire(event.silence_id)


def reconcile_with_alertmanager() -> None:
    """Bring events up to what Alertmanager holds: alerts a silence mutes, and the end of muted ones.

    Alertmanager posts nothing to the webhook about an alert a silence mutes:
    neither that it fires nor that it ends (an acknowledgement is a silence too).
    So before events are shown, the gateway asks for Alertmanager's active
    alerts when any alert may be muted: one a maintenance window suppresses is
    recorded as an event marked ``silenced_by``; a muted event whose alert is
    gone has ended.
    """
    windows = db.session.execute(db.select(AlertSilence)).scalars().all()
    muted = open_events(
        db.select(AlertEvent).filter(or_(AlertEvent.state == "acknowledged", AlertEvent.silenced_by.is_not(None)))
    )
    if not muted and not any(w.am_silences for w in windows):
        return
    try:
        alerts = current_app.extensions["alertmanager"].active_alerts()
    except Unavailable:
        log.warning("Alertmanager does not answer: muted events stay as they are for now")
        return  # events are still worth reading while Alertmanager is away
    owners = {entry["id"]: w.id for w in windows for entry in w.am_silences}
    for alert in alerts:
        owner = next((owners[s] for s in (alert.get("status") or {}).get("silencedBy") or () if s in owners), None)
        event = _record(alert) if owner else None
        if event is not None and event.state == "firing" and event.silenced_by is None:
            event.silenced_by = owner
    active = {a["fingerprint"] for a in alerts}
    for event in muted:
        if event.fingerprint not in active:
            resolve(event, utcnow())
    db.session.commit()
