"""Locks that hold across every worker of every gateway replica: PostgreSQL advisory locks.

A file lock serialises the workers of one machine; replicas on several
machines (or several gateways on one, see docs/replicas.md) share only the
DB. On SQLite there is one machine, so callers keep their file locks and
``held`` does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

# Fixed numbers, the same in every replica: a lock is known by its key alone.
DEPLOY = 0x666C_0001  # rule deploys: read rules, compile, install, reload, commit
STARTUP = 0x666C_0002  # schema migrations and the first admin, when replicas start together


def is_postgres(engine: sa.Engine) -> bool:
    """Whether ``engine`` is a PostgreSQL DB (where the replicas' locks live)."""
    return engine.dialect.name == "postgresql"


@contextmanager
def held(engine: sa.Engine, key: int) -> Iterator[None]:
    """Hold the session-level advisory lock ``key`` on a connection of its own; nothing on another DB."""
    if not is_postgres(engine):
        yield
        return
    conn = engine.connect()
    try:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        yield
    finally:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
        except sa.exc.DBAPIError:
            # A session lock outlives the transaction: a pooled connection that still held
            # it would block every other replica, so it is closed for good instead.
            conn.invalidate()
        conn.close()
