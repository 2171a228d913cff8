"""Pushing hosts' liveness: a host is discovered by its first push, and its last_seen_at written behind.

A push from a host this worker knows as a pushing one only notes the time:
the notes of every host are written together every HEARTBEAT_EVERY_S, in one
transaction, instead of one commit per push (a fifth of the ingest path's
time with 500 agents). The status judges silence over 2 min, so 15 s late
costs nothing. A heartbeat is written at once.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import bindparam, or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.db import Host, db
from gateway.errors import Conflict

log = logging.getLogger(__name__)


class LastSeen:
    """What one worker process keeps between pushes: which hosts push, and their times not yet written."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pushers: dict[str, float] = {}  # host id -> when the DB said it is a pushing host (monotonic)
        self._seen: dict[str, datetime] = {}  # host id -> its latest push, not yet written
        self._flushed_at, self._pid = time.monotonic(), os.getpid()

    def note(self, body: dict, force: bool = False) -> None:
        """Note that ``host_id``'s agent is alive; a host seen for the first time is added to the inventory.

        A push (``force`` false) from a host known here as a pushing one is only noted; a heartbeat is written at once.

        Raises:
            Conflict: ``host_id`` is a scraped host's.
        """
        host_id = body["host_id"]
        now = time.monotonic()
        if not force and now - self._pushers.get(host_id, -math.inf) < current_app.config["PUSHER_RECHECK_S"]:
            with self._lock:
                self._seen[host_id] = datetime.now(UTC)
            self._write(now)
            return
        fields = {}
        if isinstance(body.get("agent_version"), str):
            fields["agent_version"] = body["agent_version"][:64]
        if isinstance(body.get("has_gpu"), bool):
            fields["has_gpu"] = body["has_gpu"]
        for _attempt in range(2):
            host = db.session.execute(db.select(Host).filter_by(id=host_id)).scalar_one_or_none()
            if host is not None and not host.pushes:
                # Its series come from the scrape: pushed ones would collide with them, and any
                # agent key could otherwise rewrite a pulled host's liveness.
                raise Conflict(
                    f"host {host_id} is in the inventory as a scraped host, not pushed", {"host_id": host_id}
                )
            if host is None:
                hostname = body.get("hostname") if isinstance(body.get("hostname"), str) else host_id
                # Its id given at once: one INSERT, not an INSERT and an UPDATE (add_with_id's numbered ids).
                host = Host(id=host_id, hostname=hostname[:253], pushes=True, source="push", tags={})
                db.session.add(host)
                log.info("host discovered by its first push", extra={"host_id": host_id})
            host.last_seen_at = datetime.now(UTC)
            for key, value in fields.items():
                setattr(host, key, value)
            try:
                db.session.commit()
                break
            except IntegrityError:  # another worker discovered it at the same moment
                db.session.rollback()
        self._pushers[host_id] = now

    def _write(self, now: float) -> None:
        """Every noted push's time in one UPDATE, once every HEARTBEAT_EVERY_S."""
        every = current_app.config["HEARTBEAT_EVERY_S"]
        with self._lock:
            if self._pid != os.getpid():
                # Forked from the master with the rest: a phase of its own keeps the workers' UPDATEs apart.
                self._pid, self._flushed_at = os.getpid(), now - random.uniform(0, every)
            if now - self._flushed_at < every or not self._seen:
                return
            seen, self._seen, self._flushed_at = self._seen, {}, now
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
