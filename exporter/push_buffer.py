"""The agent's durable queue: points wait in SQLite until the gateway has stored them (AC-BE-008).

One row per point, in the order sampled; the sender reads the oldest rows and
deletes them only once the gateway answered, so a crash or an outage of the
gateway or of Prometheus loses nothing that fits in the buffer. Past
``max_points`` the oldest points go first, with a warning: after a long
outage the newest data is the most useful.

Look inside by hand: ``sqlite3 BUFFER 'select count(*), min(id), max(id) from points'``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class PushBuffer:
    """A size-bounded FIFO of JSON-encoded points in one SQLite file, safe to share between threads."""

    def __init__(self, path: str | Path, max_points: int = 50_000):
        self.max_points = max_points
        self.dropped = 0  # points dropped because the buffer was full, since start
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: the sampler and sender threads each hold it for
        # a millisecond every few seconds, far from SQLite's contention range.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL + NORMAL: a killed agent loses nothing; a power cut may lose the last commit.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT, point TEXT)")

    def append(self, points: list[str]) -> None:
        """Queue JSON-encoded points after all others; drop the oldest past ``max_points``."""
        if not points:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT INTO points (point) VALUES (?)", ((p,) for p in points))
            low, high = self._db.execute("SELECT min(id), max(id) FROM points").fetchone()
            # Rows leave only from the front, so ids in the table are contiguous.
            excess = high - low + 1 - self.max_points
            if excess > 0:
                self._db.execute("DELETE FROM points WHERE id < ?", (low + excess,))
                if not self.dropped:
                    log.warning("push buffer full (%d points): dropping the oldest", self.max_points)
                self.dropped += excess

    def oldest(self, limit: int) -> tuple[int, list[str]]:
        """The id of the last row and the oldest ``limit`` points; ``(0, [])`` when empty."""
        with self._lock:
            rows = self._db.execute("SELECT id, point FROM points ORDER BY id LIMIT ?", (limit,)).fetchall()
        return (rows[-1][0], [p for _, p in rows]) if rows else (0, [])

    def remove_through(self, last_id: int) -> None:
        """Forget every point up to ``last_id``: the gateway has them."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM points WHERE id <= ?", (last_id,))

    def __len__(self) -> int:
        with self._lock:
            low, high = self._db.execute("SELECT min(id), max(id) FROM points").fetchone()
        return 0 if low is None else high - low + 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
