"""Whether notifications reach their channels: ``GET /api/v1/alerts/channels``.

Two sources, because Alertmanager 0.25 counts deliveries per integration
(email, webhook, slack), not per receiver or address:

- its counters (``alertmanager_notifications_total``, ``…_failed_total``,
  ``alertmanager_notification_requests_failed_total``, by ``integration``),
  read at each request; when they grew since the previous reading, stored in
  the DB, that kind's ``last_success`` / ``last_failure`` becomes now (the time
  it was seen, so as precise as reads are frequent; the periodic silence
  reconcile reads them too);
- its log, when the gateway can read it (``FLEETWATCH_ALERTMANAGER_LOG``,
  default ``<state>/logs/alertmanager.log`` as ``fleetwatch up`` writes it):
  each failed attempt names the receiver (a rule's id) and the integration's
  index among that rule's channels of that kind, with the error; a success
  is logged when it needed retries. That gives each channel its own last
  failure, its error, and its last success after a retry.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import IntegrityError

from gateway.db import AlertRuleRow, Setting, db, utcnow
from gateway.errors import Blueprint, Unavailable
from gateway.schemas import utc_text
from rules_compiler.alerts import parse_channel

log = logging.getLogger(__name__)

blp = Blueprint("alert-channels", __name__, url_prefix="/api/v1/alerts", description="Notification channels")

KINDS = ("email", "webhook", "slack")
SEEN_SETTING = "alert-deliveries"  # the counters at the last reading, and when each kind last grew
LOG_TAIL_BYTES = 2 << 20
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_INTEGRATION = re.compile(r"^(email|webhook|slack)\[(\d+)\]$")
_FAILED_GROUP = re.compile(r"^([^/\s]+)/(email|webhook|slack)\[(\d+)\]: (.*)$", re.DOTALL)
_COUNTERS = {
    "alertmanager_notifications": "notifications",
    "alertmanager_notifications_failed": "failed",
    "alertmanager_notification_requests": "attempts",
    "alertmanager_notification_requests_failed": "failed_attempts",
}


class KindSchema(ma.Schema):
    notifications = ma.fields.Integer(
        metadata={"description": "notifications sent or given up, since Alertmanager started"}
    )
    failed = ma.fields.Integer(metadata={"description": "notifications given up after every retry"})
    attempts = ma.fields.Integer()
    failed_attempts = ma.fields.Integer()
    last_success = ma.fields.String(allow_none=True, metadata={"description": "when the gateway saw one succeed"})
    last_failure = ma.fields.String(allow_none=True, metadata={"description": "when the gateway saw an attempt fail"})


class ChannelSchema(ma.Schema):
    channel = ma.fields.String()
    kind = ma.fields.String()
    rules = ma.fields.List(ma.fields.String())
    last_success = ma.fields.String(allow_none=True, metadata={"description": "from Alertmanager's log, if readable"})
    last_failure = ma.fields.String(allow_none=True, metadata={"description": "from Alertmanager's log, if readable"})
    last_error = ma.fields.String(allow_none=True)
    integration = ma.fields.Nested(KindSchema, allow_none=True, metadata={"description": "all channels of its kind"})


class ChannelListSchema(ma.Schema):
    channels = ma.fields.List(ma.fields.Nested(ChannelSchema))
    alertmanager_log = ma.fields.String(allow_none=True, metadata={"description": "the log read, if any"})
    alertmanager_reachable = ma.fields.Boolean()


@blp.route("/channels")
class Channels(MethodView):
    @blp.response(200, ChannelListSchema)
    def get(self):
        """Each channel in use: its rules, its last success and failure, and its kind's delivery counters."""
        try:
            kinds = sample_counters()
        except Unavailable:
            kinds = None
        path = _log_path()
        from_log = notify_log(path) if path else {}
        channels: dict[str, dict] = {}
        for rule in db.session.execute(db.select(AlertRuleRow).order_by(AlertRuleRow.pk)).scalars():
            by_kind: dict[str, int] = {}
            for text in rule.channels or ():
                kind = parse_channel(text).kind
                index = by_kind[kind] = by_kind.get(kind, -1) + 1  # Alertmanager's integration index
                entry = channels.setdefault(
                    text,
                    {"channel": text, "kind": kind, "rules": [], "last_success": None, "last_failure": None,
                     "last_error": None, "integration": (kinds or {}).get(kind)},
                )  # fmt: skip
                entry["rules"].append(rule.id)
                seen = from_log.get((rule.id, kind, index), {})
                for key in ("last_success", "last_failure"):
                    if seen.get(key) and (entry[key] is None or seen[key] > entry[key]):
                        entry[key] = seen[key]
                        if key == "last_failure":
                            entry["last_error"] = seen["error"]
        return {
            "channels": list(channels.values()),
            "alertmanager_log": str(path) if path else None,
            "alertmanager_reachable": kinds is not None,
        }


def _log_path() -> Path | None:
    configured = current_app.config["ALERTMANAGER_LOG"]
    path = Path(configured) if configured else Path(current_app.config["STATE_DIR"]) / "logs" / "alertmanager.log"
    return path if path.is_file() else None


def notify_log(path: Path) -> dict[tuple[str, str, int], dict]:
    """(receiver, kind, index) → last_success / last_failure (RFC 3339) and the last error, from the log's tail."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - LOG_TAIL_BYTES))
        lines = f.read().decode(errors="replace").splitlines()
    out: dict[tuple[str, str, int], dict] = {}
    for line in lines:
        if 'msg="Notify' not in line:
            continue
        fields = {k: v[1:-1].replace('\\"', '"') if v.startswith('"') else v for k, v in _PAIR.findall(line)}
        msg, at = fields.get("msg", ""), fields.get("ts", "")
        integration = _INTEGRATION.match(fields.get("integration", ""))
        if integration and "receiver" in fields:
            key = (fields["receiver"], integration.group(1), int(integration.group(2)))
        else:  # "Notify for alerts failed": the receiver and integration lead the error
            failed = _FAILED_GROUP.match(fields.get("err", ""))
            if not failed:
                continue
            key = (failed.group(1), failed.group(2), int(failed.group(3)))
        seen = out.setdefault(key, {})
        if msg == "Notify success":
            seen["last_success"] = at
        elif "failed" in msg:
            seen["last_failure"], seen["error"] = at, fields.get("err", "")[:1000]
    return out


def sample_counters() -> dict[str, dict]:
    """Alertmanager's delivery counters by kind, with when the gateway last saw each kind succeed and fail.

    Raises:
        Unavailable: Alertmanager did not answer.
    """
    now = {kind: dict.fromkeys(_COUNTERS.values(), 0) for kind in KINDS}
    for family in text_string_to_metric_families(current_app.extensions["alertmanager"].metrics()):
        name = _COUNTERS.get(family.name)
        for sample in family.samples if name else ():
            kind = sample.labels.get("integration")
            if kind in now and sample.name.endswith("_total"):
                now[kind][name] = int(sample.value)
    row = db.session.get(Setting, SEEN_SETTING)
    before = (row.value if row else {}) or {}
    stamp = utc_text(utcnow())
    for kind, counts in now.items():
        prior = before.get(kind)
        if prior is None:  # the first reading: what happened before it is not known to have happened now
            counts["last_success"] = counts["last_failure"] = None
            continue
        restarted = any(counts[k] < prior.get(k, 0) for k in _COUNTERS.values())  # counters start again at 0
        base = dict.fromkeys(_COUNTERS.values(), 0) if restarted else prior
        succeeded = counts["notifications"] - counts["failed"] > base["notifications"] - base["failed"]
        counts["last_success"] = stamp if succeeded else prior.get("last_success")
        counts["last_failure"] = (
            stamp if counts["failed_attempts"] > base["failed_attempts"] else prior.get("last_failure")
        )
    if before != now:
        if row is None:
            db.session.add(Setting(name=SEEN_SETTING, value=now))
        else:
            row.value = now
        try:
            db.session.commit()
        except IntegrityError:  # another worker stored its first reading at the same moment: theirs stands
            db.session.rollback()
    return now
