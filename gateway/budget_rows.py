"""The series admitted into budgets the DB keeps: an API key's (api_key_series) and a host's (host_series).

A budget's rows hold a 16-byte digest of each series' labels, and a count of
them sits on the owner's row (api_keys.series_used, host_series_counts): a new
series is checked against the count, not a count(*) of up to a million rows.
Each worker remembers the series the DB admitted, so a push of series it knows
asks the DB nothing; one that brings series new to the worker reads the count
and which of them the DB has, in one statement. The rows are written by
``record()`` right before the request commits, and the counts grow by the rows
that INSERT really added: a series two workers (or replicas) admit at once is
counted once. Checked before the write, a budget may be overshot by the pushes
that take its last places in the same instant.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from flask import g
from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db import ApiKey, HostSeries, HostSeriesCount, KeyHost, KeySeries, db


class AdmittedSeries:
    """One worker's memory of the series the DB admitted into each owner's budget (a key's or a host's).

    ``rows``: the budget's rows, (owner, series digest); ``used``: the count of them on the owner's row;
    ``remembered``: the (owner, series) pairs kept before starting over (~60 bytes each), past which
    the DB answers again for the series pushes bring.
    """

    def __init__(self, rows, used, remembered: int):
        self._owner, self._series = rows.__table__.primary_key.columns
        self._used, self._used_owner = used, used.table.primary_key.columns[0]
        self._remembered = remembered
        self._lock = threading.Lock()
        self._pairs: set[tuple] = set()  # (owner, hash of the series' labels): not the labels themselves

    def admit(self, owner, series: list[bytes], limit: Callable[[], int], none_in_db: bool = False) -> list[bytes]:
        """Take ``series`` (encoded labels) into ``owner``'s budget of ``limit()``; return those beyond it.

        ``none_in_db``: the caller knows the DB holds none of them for ``owner`` (only the count is read).
        """
        new = [s for s in series if (owner, hash(s)) not in self._pairs]
        if not new:
            return []
        digests = {s: _digest(s) for s in new}
        # The count, and those of the digests the DB has, in one round trip: no row, no count (0).
        used = select(self._used).where(self._used_owner == owner).subquery()
        on = and_(self._owner == owner, self._series.in_([] if none_in_db else list(digests.values())))
        rows = db.session.execute(
            select(used.c[0], self._series).select_from(used.outerjoin(self._series.table, on))
        ).all()
        count, have = (rows[0][0] if rows else 0), {row[1] for row in rows}
        fresh = [s for s in new if digests[s] not in have]
        refused = []
        if fresh:
            room = max(0, limit() - count)
            fresh, refused = fresh[:room], fresh[room:]
            rows = [{self._owner.name: owner, "series": digests[s]} for s in fresh]
            pending(self._series.table).extend(rows)
        with self._lock:
            if len(self._pairs) > self._remembered:
                self._pairs.clear()
            over = set(refused)
            self._pairs.update((owner, hash(s)) for s in new if s not in over)
        return refused

    def withdraw(self, owner, series: list[bytes]) -> None:
        """Give back the places ``admit`` took in this request for ``series`` (refused by another budget)."""
        digests = {_digest(s) for s in series}
        rows = pending(self._series.table)
        rows[:] = [row for row in rows if row["series"] not in digests]
        with self._lock:
            self._pairs.difference_update((owner, hash(s)) for s in series)

    def forget(self, owners: set) -> None:
        """Drop what the DB admitted for ``owners`` (revoked keys)."""
        with self._lock:
            self._pairs = {pair for pair in self._pairs if pair[0] not in owners}


def _digest(labels: bytes) -> str:
    return hashlib.blake2b(labels, digest_size=16).hexdigest()


def pending(table) -> list[dict]:
    """The rows of ``table`` this request admitted, written by ``record()``."""
    return g.setdefault("budget_rows", {}).setdefault(table, [])


def record() -> None:
    """Write what this request admitted into budgets (rows another worker wrote first are left as they are)."""
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    raised = {}  # the count's column -> (its owner, the rows added)
    for table, rows in (g.pop("budget_rows", None) or {}).items():
        if not rows:
            continue
        # In one order on every worker: two pushes inserting the same rows wait on each other, never in a cycle.
        rows.sort(key=lambda row: tuple(row.values()))
        owner = table.primary_key.columns[0]
        # RETURNING makes SQLAlchemy send one INSERT of up to 1,000 rows ("insertmanyvalues"), one
        # cached statement (without it psycopg sends, and PostgreSQL runs, one INSERT per row),
        # and tells which rows are new: the counts grow by those alone.
        added = len(db.session.execute(dialect.insert(table).on_conflict_do_nothing().returning(owner), rows).all())
        if added:
            raised[_USED[table]] = (rows[0][owner.name], added)
    keys = ApiKey.__table__
    key_counts = {column.name: column + n for column, (_, n) in raised.items() if column.table is keys}
    if key_counts:  # the key's row stays locked (PostgreSQL) until the request commits: its new places in turn
        key_pk = next(pk for column, (pk, _) in raised.items() if column.table is keys)
        db.session.execute(update(keys).where(keys.c.pk == key_pk).values(key_counts))
    counts = HostSeriesCount.__table__
    if counts.c.series_used in raised:  # the host's first series make its row
        host_id, added = raised[counts.c.series_used]
        statement = dialect.insert(counts).values(host_id=host_id, series_used=added)
        raise_it = {"series_used": counts.c.series_used + statement.excluded.series_used}
        db.session.execute(statement.on_conflict_do_update(index_elements=[counts.c.host_id], set_=raise_it))


# The count each budget's rows are checked against.
_USED = {
    KeyHost.__table__: ApiKey.__table__.c.hosts_used,
    KeySeries.__table__: ApiKey.__table__.c.series_used,
    HostSeries.__table__: HostSeriesCount.__table__.c.series_used,
}
