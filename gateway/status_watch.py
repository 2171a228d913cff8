"""Host status changes into the live-update log, detected by one worker among all workers and replicas.

A host's status is computed from Prometheus (gateway/hosts.py), not stored;
a change is only visible by comparing with what was seen before. Every worker
runs a ``StatusWatch`` thread, but only the holder of the DB lease
"status-watch" compares: it reads the fleet's statuses, compares them with
``host_status_seen`` and appends a ``host.status`` event for each change, in
one transaction. Should the holder die, its lease runs out and another worker
takes over from the same table, so no change is recorded twice or lost.

The record is also what a host list filtered by status reads
(``record_is_recent``, gateway/host_status.py): judging 10,000 hosts at every
such request cost Prometheus a third of its CPU, and the watcher judges them
anyway. A record older than ``record_max_age_s`` (no holder, Prometheus away)
is not used.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

from flask import Flask, current_app
from sqlalchemy import select, update

from gateway import event_log
from gateway.db import HostStatusSeen, Lease, db, utcnow
from gateway.errors import ApiError
from gateway.host_status import fleet_statuses
from gateway.schemas import utc_text

log = logging.getLogger(__name__)

LEASE = "status-watch"
PURGE_EVERY_S = 60.0


def record_changes(holder: str) -> int:
    """Compare every host's status with the last recorded one; log and record the changes. Commits; how many.

    The lease's ``done_at`` is set, in the same transaction, to when the fleet was judged.
    """
    judged_at = time.time()
    current = fleet_statuses()
    seen = {row.host_id: row for row in db.session.execute(db.select(HostStatusSeen)).scalars()}
    now, changes = utcnow(), 0
    for host_id, (status, reasons) in current.items():
        row = seen.get(host_id)
        if row is not None and row.status == status:
            if row.reasons != reasons:
                row.reasons = reasons  # same status, other words: nothing to tell streams
            continue
        event_log.append(
            event_log.HOST_STATUS,
            {
                "host_id": host_id,
                "status": status,
                "previous": row.status if row else None,
                "reasons": reasons,
                "at": utc_text(now),
            },
        )
        if row is None:
            db.session.add(HostStatusSeen(host_id=host_id, status=status, reasons=reasons, changed_at=now))
        else:
            row.status, row.reasons, row.changed_at = status, reasons, now
        changes += 1
    for host_id in seen.keys() - current.keys():  # deleted from the inventory
        previous = seen[host_id].status
        db.session.delete(seen[host_id])
        payload = {"host_id": host_id, "status": "removed", "previous": previous, "reasons": [], "at": utc_text(now)}
        event_log.append(event_log.HOST_STATUS, payload)
        changes += 1
    db.session.execute(update(Lease).where(Lease.name == LEASE, Lease.holder == holder).values(done_at=judged_at))
    db.session.commit()
    return changes


def record_max_age_s(config) -> float:
    """How old the record may be and still stand for the fleet's statuses: three missed rounds, at least 15 s."""
    return max(3 * float(config["STREAM_STATUS_POLL_S"]), 15.0)


def record_is_recent() -> bool:
    """Whether the watcher's last round is recent enough to stand for the fleet's statuses."""
    done_at = db.session.execute(select(Lease.done_at).where(Lease.name == LEASE)).scalar()
    return done_at is not None and time.time() - done_at <= record_max_age_s(current_app.config)


def recorded_reasons(host_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The recorded status and its reasons of each of ``host_ids`` the record has."""
    rows = db.session.execute(
        select(HostStatusSeen.host_id, HostStatusSeen.status, HostStatusSeen.reasons).where(
            HostStatusSeen.host_id.in_(host_ids)
        )
    )
    return {r.host_id: (r.status, r.reasons) for r in rows}


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StatusWatch:
    """The per-worker thread that, while it holds the lease, records status changes and purges old events."""

    def __init__(self, app: Flask):
        self.app = app
        self.holder = _holder()
        self._purged_at = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (in a gunicorn worker: after the fork, see gateway/cli.py)."""
        self.holder = _holder()  # made in the master, started in a forked worker: this process's own
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        every = float(self.app.config["STREAM_STATUS_POLL_S"])
        while True:
            started = time.monotonic()
            try:
                with self.app.app_context():
                    self.tick()
            except Exception:  # the watcher outlives a bad round; the next one retries
                log.exception("status watch round failed")
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    def tick(self) -> bool:
        """One round: take or renew the lease, then record changes and purge; false if another worker holds it."""
        config = self.app.config
        ttl = max(3 * float(config["STREAM_STATUS_POLL_S"]), 10.0)
        if not event_log.hold_lease(LEASE, self.holder, ttl):
            return False
        try:
            record_changes(self.holder)
        except ApiError as exc:  # Prometheus away: no status is known, so none has changed
            db.session.rollback()
            log.warning("host statuses not compared: %s", exc.message)
        if time.monotonic() - self._purged_at > PURGE_EVERY_S:
            event_log.purge(timedelta(seconds=config["STREAM_EVENTS_KEEP_S"]), config["STREAM_EVENTS_KEEP_ROWS"])
            db.session.commit()
            self._purged_at = time.monotonic()
        return True
