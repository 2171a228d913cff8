"""Which hosts an agent's API key speaks for, and how many hosts and series it may create (issue 13 #3).

A key is bound at creation to one host id, a pattern (``gpu-*``) or ``*``
(a fleet-wide relay key). A push or heartbeat for a host outside its binding
is a 403; a host not in the inventory is added only by a key that names it
or allows discovery. The hosts and series each key has created are rows in
the DB, so the budgets hold across gunicorn workers and gateway replicas;
each worker remembers what the DB already admitted, so a steady agent costs
no query. Their rows are committed with the request's other writes (the
host's discovery): one short write transaction for a new host, as before
keys were bound. Checked before the write, a budget may be overshot by the
pushes that take its last places in the same instant.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db import Host, KeyHost, KeySeries, db
from gateway.errors import Forbidden

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


class KeyBudgets:
    """One worker's memory of the hosts and series the DB has admitted for each key.

    ``admit_*`` only read; what they admit is written by ``record()``, right
    before the request commits, so that SQLite's write lock is held for the
    inserts and the commit only, not while the points are checked.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._hosts: set[tuple[int, str]] = set()
        self._series: set[tuple[int, int]] = set()  # (key, hash of the series' labels): not the labels themselves

    def admit_host(self, scope: KeyScope, host_id: str) -> None:
        """Let ``scope``'s key speak for ``host_id``, or refuse.

        Raises:
            Forbidden: outside the key's binding; not in the inventory and the key may not add
                hosts; or the key has reached its host budget.
        """
        if not scope.covers(host_id):
            raise Forbidden(
                f"this API key speaks for hosts {scope.pattern!r}, not {host_id!r}",
                {"host_id": host_id, "host_pattern": scope.pattern},
            )
        if (scope.pk, host_id) in self._hosts:
            return
        if db.session.execute(select(KeyHost.host_id).filter_by(key_pk=scope.pk, host_id=host_id)).first() is None:
            known = db.session.execute(select(Host.pk).filter_by(id=host_id)).first()
            if known is None and not (scope.discovery or scope.exact):
                raise Forbidden(
                    f'host {host_id} is not in the inventory: add it (POST /api/v1/hosts with exporter "push") '
                    "or use a key made with allow_discovery",
                    {"host_id": host_id},
                )
            limit = scope.max_hosts or current_app.config["API_KEY_MAX_HOSTS"]
            count = db.session.execute(select(func.count()).where(KeyHost.key_pk == scope.pk)).scalar_one()
            if count >= limit:
                raise Forbidden(
                    f"this API key has pushed for {limit} hosts, its budget (max_hosts)", {"max_hosts": limit}
                )
            _pending().setdefault(KeyHost, []).append({"key_pk": scope.pk, "host_id": host_id})
        with self._lock:
            if len(self._hosts) > _REMEMBERED:
                self._hosts.clear()
            self._hosts.add((scope.pk, host_id))

    def admit_series(self, scope: KeyScope, series: list[bytes]) -> list[bytes]:
        """Take ``series`` (encoded labels) into the key's series budget; return those beyond it."""
        new = [s for s in series if (scope.pk, hash(s)) not in self._series]
        if not new:
            return []
        digests = {s: hashlib.blake2b(s, digest_size=16).hexdigest() for s in new}
        have = set(
            db.session.execute(
                select(KeySeries.series).where(KeySeries.key_pk == scope.pk, KeySeries.series.in_(digests.values()))
            ).scalars()
        )
        fresh = [s for s in new if digests[s] not in have]
        refused = []
        if fresh:
            limit = scope.max_series or current_app.config["API_KEY_MAX_SERIES"]
            count = db.session.execute(select(func.count()).where(KeySeries.key_pk == scope.pk)).scalar_one()
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
        for model, rows in pending.items():
            if rows:  # one cached statement, executemany: a host's 100 new series cost a millisecond
                db.session.execute(dialect.insert(model.__table__).on_conflict_do_nothing(), rows)


def _pending() -> dict:
    return g.setdefault("key_budget_rows", {})
