"""Per-user request counters (§8.9) and per-account login failures, held across every gateway worker.

One atomic upsert per request, or per batch of requests where the limit is
large. With the default SQLite DB the counters live in a file of their own
beside it, written through one plain sqlite3 connection per thread in
autocommit: the write lock is held for one statement, not for an ORM
session's commit, and the gateway's own DB is not locked by every read.
SQLite cannot be shared between machines, so this loses nothing. With
PostgreSQL (several replicas) the counters are a table of the shared DB.

Batches: a worker takes RATE_LIMIT_BATCH_FRACTION of a limit (at least one
request) from the shared counter in one write and spends it without writing.
No more than the limit ever passes; a user whose requests are spread over W
workers may be refused up to (W - 1) batches early. The shipped limits (60
reads, 30 writes, 20 logins a minute) are below 100: one request a batch,
counted exactly.
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

# Take :n requests from the key's window (a new one if the last has run out): the count after, and the start.
UPSERT = (
    "INSERT INTO rate_counters (key, window_start, count) VALUES (:k, :now, :n) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN :now - rate_counters.window_start >= :w THEN :n ELSE rate_counters.count + :n END, "
    "window_start = CASE WHEN :now - rate_counters.window_start >= :w "
    "THEN :now ELSE rate_counters.window_start END "
    "RETURNING count, window_start"
)
# A failed login: count one more in a row and remember when; a quiet spell of :reset starts over.
FAILED = (
    "INSERT INTO rate_counters (key, window_start, count) VALUES (:k, :now, 1) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN :now - rate_counters.window_start >= :reset THEN 1 ELSE rate_counters.count + 1 END, "
    "window_start = :now RETURNING count, window_start"
)
PEEK = "SELECT count, window_start FROM rate_counters WHERE key = :k"
FORGET = "DELETE FROM rate_counters WHERE key = :k"


class LocalCounters:
    """The counters in their own SQLite file; one connection per thread, made after gunicorn forks."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def run(self, sql: str, params: dict) -> tuple | None:
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
        return conn.execute(sql, params).fetchone()


def _run(sql: str, **params) -> tuple | None:
    """One statement on the counters, in their own SQLite file or in the shared DB; committed at once."""
    local = current_app.extensions["rate_counters"]
    if local:
        return local.run(sql, params)
    # In autocommit on a connection of its own: one round trip, not BEGIN, the statement and COMMIT,
    # and the request's own transaction is neither committed early nor held by a counter's row.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        result = conn.execute(text(sql), params)
        return result.first() if result.returns_rows else None  # a DELETE returns none


def counters_for(app) -> LocalCounters | None:
    """The local counters when the gateway's DB is a SQLite file, else None (use the shared DB)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:"):
        return None
    return LocalCounters(Path(app.config["STATE_DIR"]) / "ratelimit.db")


def count_request(key: str, limit: int, window_s: float = 60.0) -> None:
    """Count one request against ``key``; 429 past ``limit`` in the window that began with the first one."""
    now = time.time()
    batch = max(1, int(limit * current_app.config["RATE_LIMIT_BATCH_FRACTION"]))
    reserved = current_app.extensions["rate_reserved"]
    if batch > 1:
        remaining = reserved.take(key, now)
        if remaining is not None:
            g.rate_limit_remaining = remaining
            return
    count, started = _run(UPSERT, k=key, now=now, w=window_s, n=batch)
    before = count - batch  # taken before this batch, by any worker
    if before >= limit:
        _too_many(f"rate limit of {limit} requests a minute exceeded", started + window_s - now, {"limit": limit})
    g.rate_limit_remaining = limit - before - 1
    if batch > 1:  # the rest of the batch, as far as the limit allows, for this worker's next requests
        reserved.hold(key, started + window_s, min(batch, limit - before) - 1, limit - before - 1)


class ReservedRequests:
    """Requests one worker took from the shared counters in a batch and has not spent yet, by key."""

    def __init__(self):
        self._held: dict[str, tuple[float, int, int]] = {}  # key -> (window's end, left, remaining after)
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> int | None:
        """One reserved request of ``key``'s current window: the limit's remaining estimate; None if none."""
        with self._lock:
            held = self._held.get(key)
            if held is None or held[1] <= 0 or now >= held[0]:
                return None
            self._held[key] = (held[0], held[1] - 1, held[2] - 1)
            return max(0, held[2] - 1)

    def hold(self, key: str, until: float, left: int, remaining: int) -> None:
        with self._lock:
            if len(self._held) >= 10_000:  # users × (read, write): start over rather than grow
                self._held.clear()
            self._held[key] = (until, left, remaining)


def _too_many(message: str, wait_s: float, details: dict):
    retry = max(1, int(wait_s + 0.999))
    raise ApiError(
        f"{message}; retry in {retry} s",
        {**details, "retry_after_s": retry},
        status=429,
        headers={"Retry-After": str(retry), "X-RateLimit-Remaining": "0"},
    )


def check_backoff(key: str, free: int, max_wait_s: float) -> None:
    """429 while ``key`` (an account) waits out its backoff: 1 s after ``free`` failures in a row, then doubling."""
    row = _run(PEEK, k=key)
    if row is None or row[0] < free:
        return
    wait = min(2.0 ** (row[0] - free), max_wait_s) - (time.time() - row[1])
    if wait > 0:
        _too_many("too many failed logins for this account", wait, {"failures": row[0]})


def count_failure(key: str, reset_s: float = 86400.0) -> None:
    """One more failure in a row for ``key``; the count starts over after ``reset_s`` without one."""
    _run(FAILED, k=key, now=time.time(), reset=reset_s)


def forget(key: str) -> None:
    _run(FORGET, k=key)
