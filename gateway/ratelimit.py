"""Per-user request counters (§8.9) that hold across every gateway worker.

One atomic upsert per request. With the default SQLite DB the counters live
in a file of their own beside it, written through one plain sqlite3
connection per thread in autocommit: the write lock is held for one
statement, not for an ORM session's commit, and the gateway's own DB is not
locked by every read. SQLite cannot be shared between machines, so this loses
nothing. With PostgreSQL (several replicas) the counters are a table of the
shared DB.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from flask import current_app, g
from sqlalchemy import text

from gateway.db import db, private_file
from gateway.errors import ApiError

UPSERT = (
    "INSERT INTO rate_counters (key, window_start, count) VALUES (:k, :now, 1) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN :now - rate_counters.window_start >= :w THEN 1 ELSE rate_counters.count + 1 END, "
    "window_start = CASE WHEN :now - rate_counters.window_start >= :w "
    "THEN :now ELSE rate_counters.window_start END "
    "RETURNING count, window_start"
)


class LocalCounters:
    """The counters in their own SQLite file; one connection per thread, made after gunicorn forks."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def hit(self, key: str, now: float, window_s: float) -> tuple[int, float]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(private_file(self.path), timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # Counters, not records: a power cut may forget the last few, never corrupt the file.
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS rate_counters "
                "(key TEXT PRIMARY KEY, window_start REAL NOT NULL, count INTEGER NOT NULL)"
            )
            self._local.conn = conn
        return conn.execute(UPSERT, {"k": key, "now": now, "w": window_s}).fetchone()


def shared_counter(key: str, now: float, window_s: float) -> tuple[int, float]:
    row = db.session.execute(text(UPSERT), {"k": key, "now": now, "w": window_s}).one()
    db.session.commit()
    return row


def counters_for(app) -> LocalCounters | None:
    """The local counters when the gateway's DB is a SQLite file, else None (use the shared DB)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:"):
        return None
    return LocalCounters(Path(app.config["STATE_DIR"]) / "ratelimit.db")


def count_request(key: str, limit: int, window_s: float = 60.0) -> None:
    """Count one request against ``key``; 429 past ``limit`` in the window that began with the first one."""
    now = time.time()
    local = current_app.extensions["rate_counters"]
    count, started = local.hit(key, now, window_s) if local else shared_counter(key, now, window_s)
    g.rate_limit_remaining = max(0, limit - count)
    if count > limit:
        retry = max(1, int(started + window_s - now + 0.999))
        raise ApiError(
            f"rate limit of {limit} requests a minute exceeded; retry in {retry} s",
            {"limit": limit, "retry_after_s": retry},
            status=429,
            headers={"Retry-After": str(retry), "X-RateLimit-Remaining": "0"},
        )
