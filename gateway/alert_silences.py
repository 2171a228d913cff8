"""Silences and maintenance windows (§8.5): stored in the DB, kept in force as Alertmanager silences.

The DB is the truth; Alertmanager holds silences made of it. ``reconcile``
makes Alertmanager's match it: each window open now or within
ALERT_SILENCE_AHEAD_S (a recurring window's next occurrences) gets a silence
with the scope's matchers as of now (a tag scope is the ids of the hosts that
have those tags); a silence Alertmanager lost (restarted without its data) is
made again; one no longer wanted is expired. It runs at the gateway's start,
after every write here, and every ALERT_SILENCE_RECONCILE_S in each worker;
workers and replicas may race, so a row's list of Alertmanager silences is
written only at the version it was read at, and the loser expires what it made.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timedelta

import marshmallow as ma
from flask import Flask, current_app, g
from flask.views import MethodView

from gateway.alert_deliveries import sample_counters
from gateway.alert_events import reconcile_with_alertmanager
from gateway.auth import audit
from gateway.db import AlertRuleRow, AlertSilence, Host, add_with_id, db, utcnow
from gateway.errors import Blueprint, NotFound, Unavailable
from gateway.schemas import ChangeSchema, Page, PageArgs, UtcDateTime, page
from rules_compiler.alerts import RuleInvalid
from rules_compiler.silences import (
    SilenceScope,
    check_window,
    covers,
    hosts_in_scope,
    matchers,
    parse_recurring,
    parse_silence_scope,
    windows,
)

log = logging.getLogger(__name__)

blp = Blueprint("alert-silences", __name__, url_prefix="/api/v1/alerts", description="Silences, maintenance windows")


class RecurringSchema(ma.Schema):
    weekdays = ma.fields.List(ma.fields.String(), required=True, metadata={"example": ["mon", "tue"]})
    time = ma.fields.String(required=True, metadata={"example": "02:00"})
    duration = ma.fields.String(required=True, metadata={"example": "1h"})
    timezone = ma.fields.String(load_default="UTC", metadata={"example": "Europe/Paris"})


class SilenceSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    scope = ma.fields.Raw(
        load_default=dict,
        metadata={
            "description": 'any of {"hosts": [ids], "tags": {...} (as a rule\'s scope), "rule_ids": [ids]}; {}: all',
            "example": {"tags": {"rack": "r7"}},
        },
    )
    starts_at = ma.fields.AwareDateTime(allow_none=True, metadata={"description": "default: now"})
    ends_at = ma.fields.AwareDateTime(allow_none=True)
    recurring = ma.fields.Nested(RecurringSchema, allow_none=True, metadata={"description": "instead of the times"})
    comment = ma.fields.String(load_default="", validate=ma.validate.Length(max=500))
    author = ma.fields.String(dump_only=True)
    active = ma.fields.Boolean(dump_only=True, metadata={"description": "a window of it is open now"})
    alertmanager_ids = ma.fields.List(ma.fields.String(), dump_only=True)
    created_at = UtcDateTime(dump_only=True)
    updated_at = UtcDateTime(dump_only=True)


class SilenceUpdateSchema(SilenceSchema):
    """Any subset of a silence's fields (loaded with ``partial=True``)."""


class SilenceListSchema(Page):
    silences = ma.fields.List(ma.fields.Nested(SilenceSchema))


def _shown(row: AlertSilence, now: datetime) -> dict:
    return {
        "id": row.id,
        "scope": row.scope,
        "starts_at": row.starts_at,
        "ends_at": row.ends_at,
        "recurring": row.recurring,
        "comment": row.comment,
        "author": row.author,
        "active": _covers(row, now),
        "alertmanager_ids": [e["id"] for e in row.am_silences],
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _get(silence_id: str) -> AlertSilence:
    row = db.session.execute(db.select(AlertSilence).filter_by(id=silence_id)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no silence {silence_id}", {"id": silence_id})
    return row


def _normalise(fields: dict) -> dict:
    """The whole silence as it will be stored, checked as a whole.

    Raises:
        RuleInvalid: a bad scope, an unknown rule, a window that ends before it starts, an unknown time zone.
    """
    scope = parse_silence_scope(fields.get("scope") or {})
    known = set(db.session.execute(db.select(AlertRuleRow.id).filter(AlertRuleRow.id.in_(scope.rule_ids))).scalars())
    unknown = sorted(set(scope.rule_ids) - known)
    if unknown:
        raise RuleInvalid("scope", f"no alert rule {', '.join(unknown)}", rule_ids=unknown)
    recurring = parse_recurring(fields["recurring"]) if fields.get("recurring") is not None else None
    starts, ends = fields.get("starts_at"), fields.get("ends_at")
    check_window(starts, ends, recurring)
    if recurring is None and starts is None:
        starts = utcnow()
    if ends is not None and ends <= utcnow():
        raise RuleInvalid("ends_at", "ends_at is in the past: the silence would never be in force")
    return {
        **fields,
        "scope": scope.as_json(),
        "starts_at": starts,
        "ends_at": ends,
        "recurring": recurring.as_json() if recurring else None,
    }


@blp.route("/silences")
class Silences(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, SilenceListSchema)
    def get(self, args):
        """Silences and maintenance windows, newest first, with whether each is in force now."""
        rows, meta = page(db.select(AlertSilence).order_by(AlertSilence.pk.desc()), args, db.session)
        now = utcnow()
        return {"silences": [_shown(r, now) for r in rows], **meta}

    @blp.arguments(SilenceSchema)
    @blp.response(201, ChangeSchema)
    def post(self, body):
        """Create a silence or maintenance window (admin); Alertmanager mutes its alerts while a window is open."""
        fields = _normalise(body)
        row = add_with_id(AlertSilence(**fields, author=g.principal.email or g.principal.id, am_silences=[]))
        audit("alert_silence_create", row.id, scope=row.scope, recurring=row.recurring, comment=row.comment)
        db.session.commit()
        _reconcile_now()
        return {"id": row.id, "status": "created"}


@blp.route("/silences/<silence_id>")
class SilenceById(MethodView):
    @blp.response(200, SilenceSchema)
    def get(self, silence_id):
        """One silence."""
        return _shown(_get(silence_id), utcnow())

    @blp.arguments(SilenceUpdateSchema(partial=True))
    @blp.response(200, ChangeSchema)
    def put(self, body, silence_id):
        """Change a silence (admin; any subset of its fields; times replace a recurring window and back)."""
        row = _get(silence_id)
        merged = {k: getattr(row, k) for k in ("scope", "starts_at", "ends_at", "recurring", "comment")}
        if "recurring" in body and body["recurring"] is not None:
            merged |= {"starts_at": None, "ends_at": None}
        if {"starts_at", "ends_at"} & set(body):
            merged["recurring"] = None
        fields = _normalise(merged | body)
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        audit("alert_silence_update", row.id, **{k: str(v) for k, v in body.items()})
        db.session.commit()
        _reconcile_now()
        return {"id": silence_id, "status": "updated"}

    @blp.response(200, ChangeSchema)
    def delete(self, silence_id):
        """Delete a silence (admin): Alertmanager's silences made of it end now."""
        row = _get(silence_id)
        for entry in row.am_silences:
            current_app.extensions["alertmanager"].expire(entry["id"])
        db.session.delete(row)
        audit("alert_silence_delete", silence_id, scope=row.scope, comment=row.comment)
        db.session.commit()
        return {"id": silence_id, "status": "deleted"}


def _recurring(row: AlertSilence):
    return parse_recurring(row.recurring) if row.recurring else None


def _windows(row: AlertSilence, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    return windows(_aware(row.starts_at), _aware(row.ends_at), _recurring(row), since, until)


def _covers(row: AlertSilence, at: datetime) -> bool:
    return covers(_aware(row.starts_at), _aware(row.ends_at), _recurring(row), at)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they are UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _inventory() -> dict[str, dict]:
    return {h.id: h.tags or {} for h in db.session.execute(db.select(Host.id, Host.tags))}


def maintenance(host_ids: list[str], at: datetime | None = None) -> dict[str, str]:
    """Host id → the id of a maintenance window open on it at ``at`` (now), for the hosts that have one."""
    at = at or utcnow()
    open_now = [r for r in db.session.execute(db.select(AlertSilence)).scalars() if _covers(r, at)]
    out: dict[str, str] = {}
    inventory = None
    for row in open_now:
        scope: SilenceScope = parse_silence_scope(row.scope)
        if not scope.names_hosts:
            continue  # it mutes some rules, the hosts are not in maintenance
        if scope.tags and inventory is None:
            inventory = _inventory()
        covered = hosts_in_scope(scope, inventory or {})
        for host_id in host_ids:
            if covered is None or host_id in covered:
                out.setdefault(host_id, row.id)
    return out


def reconcile(now: datetime | None = None) -> None:
    """Make Alertmanager's silences match the DB's windows (see the module's docstring).

    Raises:
        Unavailable: Alertmanager did not answer; what it made before is recorded.
    """
    am = current_app.extensions["alertmanager"]
    now = now or utcnow()
    until = now + timedelta(seconds=float(current_app.config["ALERT_SILENCE_AHEAD_S"]))
    db.session.expire_all()
    rows = db.session.execute(db.select(AlertSilence)).scalars().all()
    inventory = _inventory() if any(r.scope.get("tags") for r in rows) else {}
    plans = []
    for row in rows:
        found = matchers(parse_silence_scope(row.scope), inventory)
        spans = _windows(row, now, until) if found is not None else []
        wanted = [(s.isoformat(), e.isoformat(), found) for s, e in spans]
        comment = f"{row.id} in fleetwatch: {row.comment}".strip()
        plans.append((row.pk, row.version, list(row.am_silences), wanted, row.author, comment))
    # The read ends here: each write below is a transaction of its own that sees what other workers
    # committed meanwhile (SQLite cannot turn an older read into a write; PostgreSQL re-checks the WHERE).
    db.session.commit()
    # Asked after reading the rows: a silence another worker made and stored before is then in both.
    live = am.live_silences()
    failed = None
    for pk, version, have, wanted, author, comment in plans:
        keep, made = [], []
        for start, end, match in wanted:
            same = next((h for h in have if (h["starts_at"], h["ends_at"], h["matchers"]) == (start, end, match)), None)
            if same is not None and same["id"] in live:
                keep.append(same)
                continue
            try:
                silence_id = am.create_silence(
                    match, datetime.fromisoformat(start), datetime.fromisoformat(end), author, comment
                )
            except Unavailable as exc:
                failed = exc  # what was made so far is still stored below, so it is not made twice
                break
            made.append({"id": silence_id, "starts_at": start, "ends_at": end, "matchers": match})
        keep += made
        if failed is not None:
            keep += [h for h in have if h not in keep and h["id"] in live]  # not judged this time
        if keep != have:
            written = db.session.execute(
                db.update(AlertSilence)
                .where(AlertSilence.pk == pk, AlertSilence.version == version)
                .values(am_silences=keep, version=version + 1)
            ).rowcount
            db.session.commit()
            stale = made if not written else [h for h in have if h not in keep]
            for entry in stale:  # lost the race: the other worker's silences stand; or no longer wanted
                if entry["id"] in live or entry in made:
                    am.expire(entry["id"])
        if failed is not None:
            raise failed
    db.session.expire_all()


def _reconcile_now() -> None:
    """After a write: Alertmanager follows now if it answers, else at the next periodic reconcile."""
    try:
        reconcile()
    except Unavailable as exc:
        log.warning("Alertmanager does not answer; silences follow when it does: %s", exc.details)


def reconcile_on_start() -> None:
    """At a gateway's start: re-make what Alertmanager lost while either was down."""
    _reconcile_now()


def start_reconciler(app: Flask) -> None:
    """In this worker process, a thread that reconciles every ALERT_SILENCE_RECONCILE_S (0: never).

    ``fleetwatch-gateway serve`` starts one in each gunicorn worker (after the fork:
    threads do not survive one); an app made in-process runs none unless asked.
    """
    every = float(app.config["ALERT_SILENCE_RECONCILE_S"])
    started = app.extensions.setdefault("silence_reconciler", {})
    if every <= 0 or started.get("pid") == os.getpid():
        return
    started["pid"] = os.getpid()  # gunicorn forks workers after create_app: one thread per process

    def loop() -> None:
        while True:
            time.sleep(every)
            with app.app_context():
                try:
                    reconcile()
                    reconcile_with_alertmanager()  # muted alerts become events even when nobody reads them
                    sample_counters()  # a channel's last success and failure, seen within a period
                except Unavailable as exc:
                    log.warning("Alertmanager does not answer; silences follow when it does: %s", exc.details)
                except Exception:  # the thread must outlive a bad turn; the next one tries again
                    log.exception("silence reconcile failed")
                finally:
                    db.session.remove()

    threading.Thread(target=loop, name="silence-reconciler", daemon=True).start()
