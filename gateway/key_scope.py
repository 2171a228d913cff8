"""Which hosts an agent's API key speaks for, and how many hosts and series it may create (issue 13 #3).

A key is bound at creation to one host id, a pattern (``gpu-*``) or ``*``
(a fleet-wide relay key). A push or heartbeat for a host outside its binding
is a 403; a host not in the inventory is added only by a key that names it
or allows discovery. The hosts and series each key has created are rows in
the DB, so the budgets hold across gunicorn workers and gateway replicas;
each worker remembers what the DB already admitted, and re-reads the keys'
revocations and budgets once per API_KEY_ADMITTED_S, so a steady agent costs
no query. Their rows, and the counts of them on the key's row (a budget is
checked against those, not a count(*) of up to a million rows), are committed
with the request's other writes (the host's discovery): one short write
transaction for a new host, as before keys were bound. Checked before the
write, a budget may be overshot by the pushes that take its last places in
the same instant.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy import exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db import ApiKey, Host, KeyHost, KeySeries, db
from gateway.errors import Forbidden, Unauthorized

PATTERN = re.compile(r"^(\*|[A-Za-z0-9*][A-Za-z0-9._*-]{0,63})$")  # host ids' characters, and *
# (key, host) and (key, series) pairs a worker keeps before starting over: ~60 bytes each, so
# ~15 MB per worker at most; past it the DB answers again for the series pushes bring.
_REMEMBERED = 250_000


@dataclass(frozen=True)
class KeyScope:
    pk: int
    pattern: str
    discovery: bool
    max_hosts: int | None
    max_series: int | None

    def covers(self, host_id: str) -> bool:
        """Whether the binding includes ``host_id``."""
        if self.pattern == "*":
            return True
        return re.fullmatch(".*".join(map(re.escape, self.pattern.split("*"))), host_id) is not None

    @property
    def exact(self) -> bool:
        return "*" not in self.pattern


@dataclass(frozen=True)
class _KeyState:
    """What the DB said of a key at the worker's last look: revoked, or its budgets (None: the defaults)."""

    revoked: bool = False
    max_hosts: int | None = None
    max_series: int | None = None


class KeyBudgets:
    """One worker's memory of the hosts and series the DB has admitted for each key, for API_KEY_ADMITTED_S.

    A (key, host) or (key, series) pair the DB admitted stays admitted (its row is never
    removed while the key lives), so what may change under the memory is the key itself:
    revoked, or its budgets lowered. Those are read for every key in one query, at most once
    per API_KEY_ADMITTED_S per worker, whatever the number of keys and hosts: a steady push
    costs no query, and a revocation or a new budget holds on every worker and replica
    within that bound. ``admit_*`` only read; what they admit is written by ``record()``,
    right before the request commits, so that SQLite's write lock is held for the inserts
    and the commit only, not while the points are checked.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._hosts: set[tuple[int, str]] = set()
        self._series: set[tuple[int, int]] = set()  # (key, hash of the series' labels): not the labels themselves
        self._keys: dict[int, _KeyState] = {}  # keys revoked or with budgets of their own
        self._looked_at = -math.inf

    def _key(self, scope: KeyScope) -> _KeyState:
        """``scope``'s key as the DB said at most API_KEY_ADMITTED_S ago; Unauthorized if it is revoked."""
        now = time.monotonic()
        if now - self._looked_at >= current_app.config["API_KEY_ADMITTED_S"]:
            rows = db.session.execute(
                select(ApiKey.pk, ApiKey.revoked_at, ApiKey.max_hosts, ApiKey.max_series).where(
                    or_(ApiKey.revoked_at.is_not(None), ApiKey.max_hosts.is_not(None), ApiKey.max_series.is_not(None))
                )
            )
            keys = {r.pk: _KeyState(r.revoked_at is not None, r.max_hosts, r.max_series) for r in rows}
            with self._lock:
                # Revoked since the last look: forget what they were admitted (the older ones are gone already).
                was = self._keys
                revoked = {pk for pk, key in keys.items() if key.revoked and not was.get(pk, _KeyState()).revoked}
                if revoked:
                    self._hosts = {pair for pair in self._hosts if pair[0] not in revoked}
                    self._series = {pair for pair in self._series if pair[0] not in revoked}
                self._keys, self._looked_at = keys, now
        # Not in the look: neither revoked nor given budgets then, or made since; its lookup (auth) is newer.
        key = self._keys.get(scope.pk) or _KeyState(False, scope.max_hosts, scope.max_series)
        if key.revoked:
            raise Unauthorized("invalid or revoked API key")
        return key

    def series_budget(self, scope: KeyScope) -> int:
        """How many series ``scope``'s key may create."""
        return self._key(scope).max_series or current_app.config["API_KEY_MAX_SERIES"]

    def admit_host(self, scope: KeyScope, host_id: str) -> bool:
        """Let ``scope``'s key speak for ``host_id``, or refuse; True when the key speaks for it for the first time.

        Raises:
            Forbidden: outside the key's binding; not in the inventory and the key may not add
                hosts; or the key has reached its host budget.
            Unauthorized: the key was revoked (seen within API_KEY_ADMITTED_S).
        """
        if not scope.covers(host_id):
            raise Forbidden(
                f"this API key speaks for hosts {scope.pattern!r}, not {host_id!r}",
                {"host_id": host_id, "host_pattern": scope.pattern},
            )
        key = self._key(scope)
        if (scope.pk, host_id) in self._hosts:
            return False
        pk, host = KeyHost.key_pk, KeyHost.host_id
        # One round trip for the three facts a first push needs.
        admitted, known, used = db.session.execute(
            select(
                exists().where(pk == scope.pk, host == host_id),
                exists().where(Host.id == host_id),
                select(ApiKey.hosts_used).where(ApiKey.pk == scope.pk).scalar_subquery(),
            )
        ).one()
        if not admitted:
            if not known and not (scope.discovery or scope.exact):
                raise Forbidden(
                    f'host {host_id} is not in the inventory: add it (POST /api/v1/hosts with exporter "push") '
                    "or use a key made with allow_discovery",
                    {"host_id": host_id},
                )
            limit = key.max_hosts or current_app.config["API_KEY_MAX_HOSTS"]
            if used >= limit:
                raise Forbidden(
                    f"this API key has pushed for {limit} hosts, its budget (max_hosts)", {"max_hosts": limit}
                )
            _pending().setdefault(KeyHost, []).append({"key_pk": scope.pk, "host_id": host_id})
        with self._lock:
            if len(self._hosts) > _REMEMBERED:
                self._hosts.clear()
            self._hosts.add((scope.pk, host_id))
        return not admitted

    def admit_series(self, scope: KeyScope, series: list[bytes], new_host: bool = False) -> list[bytes]:
        """Take ``series`` (encoded labels) into the key's series budget; return those beyond it.

        ``new_host``: ``admit_host`` just admitted the series' host, so the DB holds none of them for this key
        (a series' labels hold its host id, and a key's host and series rows are committed together).
        """
        new = [s for s in series if (scope.pk, hash(s)) not in self._series]
        if not new:
            return []
        digests = {s: hashlib.blake2b(s, digest_size=16).hexdigest() for s in new}
        have = set()
        if not new_host:
            have = set(
                db.session.execute(
                    select(KeySeries.series).where(KeySeries.key_pk == scope.pk, KeySeries.series.in_(digests.values()))
                ).scalars()
            )
        fresh = [s for s in new if digests[s] not in have]
        refused = []
        if fresh:
            limit = self.series_budget(scope)
            count = db.session.execute(select(ApiKey.series_used).where(ApiKey.pk == scope.pk)).scalar_one()
            room = max(0, limit - count)
            fresh, refused = fresh[:room], fresh[room:]
            rows = [{"key_pk": scope.pk, "series": digests[s]} for s in fresh]
            _pending().setdefault(KeySeries, []).extend(rows)
        with self._lock:
            if len(self._series) > _REMEMBERED:
                self._series.clear()
            over = set(refused)
            self._series.update((scope.pk, hash(s)) for s in new if s not in over)
        return refused

    @staticmethod
    def record() -> None:
        """Write what this request admitted (rows another worker wrote first are left as they are)."""
        pending = g.pop("key_budget_rows", None) or {}
        dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
        used, key_pk, keys = {}, None, ApiKey.__table__
        for model, rows in pending.items():
            if rows:
                # RETURNING makes SQLAlchemy send one INSERT of up to 1,000 rows ("insertmanyvalues"), one
                # cached statement (without it psycopg sends, and PostgreSQL runs, one INSERT per row),
                # and tells which rows are new: the key's counts grow by those alone.
                table = model.__table__
                statement = dialect.insert(table).on_conflict_do_nothing().returning(table.c.key_pk)
                added = len(db.session.execute(statement, rows).all())
                if added:
                    column = _USED[model]
                    used[column], key_pk = keys.c[column] + added, rows[0]["key_pk"]
        if used:  # the key's row stays locked (PostgreSQL) until the request commits: its new places in turn
            db.session.execute(update(keys).where(keys.c.pk == key_pk).values(used))


_USED = {KeyHost: "hosts_used", KeySeries: "series_used"}  # ApiKey's count of each table's rows


def _pending() -> dict:
    return g.setdefault("key_budget_rows", {})
