"""The live-update log: host status changes and alert events, in the DB, in the order streams deliver them.

Every worker of every replica reads the same table, so a stream sees the same
events whichever worker serves it, and ``Last-Event-ID`` (an id of this table)
resumes it anywhere. Ids must reach readers in increasing order: a reader that
has passed id 7 never looks below it again. SQLite commits one writer at a
time, so that holds by itself; on PostgreSQL a sequence hands ids out at
insert time and commits may land out of order, so an appender locks the table
until its commit (events are few: a status change, an alert transition).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from gateway.db import Lease, StreamEvent, db, utcnow
from gateway.schemas import utc_text

HOST_STATUS, ALERT_EVENT = "host.status", "alert.event"


def append(kind: str, payload: dict, admin_extra: dict | None = None) -> None:
    """Add an event to the caller's transaction; it is seen by streams once that commits."""
    if db.session.get_bind().dialect.name == "postgresql":
        # Held until commit: the next appender gets a higher id and commits after this one.
        db.session.execute(text("LOCK TABLE stream_events IN SHARE ROW EXCLUSIVE MODE"))
    db.session.add(StreamEvent(kind=kind, payload=payload, admin_extra=admin_extra))


def alert_changed(event, **admin_extra) -> None:
    """Log an alert event's new state (firing, acknowledged, resolved); ``admin_extra`` only for admins."""
    append(
        ALERT_EVENT,
        {
            "id": event.id,
            "rule_id": event.rule_id,
            "rule_name": event.rule_name,
            "host_id": event.host_id,
            "state": event.state,
            "severity": event.severity,
            "value": event.value,
            "summary": event.summary,
            "labels": event.labels,
            "started_at": _text(event.started_at),
            "ended_at": _text(event.ended_at),
            "acknowledged_by": event.acknowledged_by,
            "acknowledged_at": _text(event.acknowledged_at),
        },
        {k: v for k, v in admin_extra.items() if v is not None} or None,
    )


def _text(at: datetime | None) -> str | None:
    return None if at is None else utc_text(at)


def last_id() -> int:
    """The newest event's id (0 for none)."""
    return db.session.execute(select(func.max(StreamEvent.pk))).scalar() or 0


def oldest_id() -> int | None:
    return db.session.execute(select(func.min(StreamEvent.pk))).scalar()


def read_after(after: int, limit: int = 500, upto: int | None = None) -> list[tuple[int, str, dict, dict | None]]:
    """Events with ids above ``after`` (and at most ``upto``), oldest first: (id, kind, payload, admin_extra)."""
    q = select(StreamEvent.pk, StreamEvent.kind, StreamEvent.payload, StreamEvent.admin_extra).where(
        StreamEvent.pk > after
    )
    if upto is not None:
        q = q.where(StreamEvent.pk <= upto)
    return [tuple(row) for row in db.session.execute(q.order_by(StreamEvent.pk).limit(limit))]


def purge(keep: timedelta, keep_rows: int) -> int:
    """Drop events older than ``keep`` and all but the newest ``keep_rows``; how many went."""
    gone = db.session.execute(delete(StreamEvent).where(StreamEvent.at < utcnow() - keep)).rowcount
    floor = last_id() - keep_rows
    if floor > 0:
        gone += db.session.execute(delete(StreamEvent).where(StreamEvent.pk <= floor)).rowcount
    return gone


def hold_lease(name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``holder``; true while it is ``holder``'s. Commits."""
    now = time.time()
    taken = db.session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
        .values(holder=holder, expires_at=now + ttl_s)
    ).rowcount
    if not taken:
        if db.session.get(Lease, name) is not None:
            db.session.rollback()
            return False
        db.session.add(Lease(name=name, holder=holder, expires_at=now + ttl_s))
    try:
        db.session.commit()
    except IntegrityError:  # another worker made the row first: it holds the lease
        db.session.rollback()
        return False
    return True
