"""What one worker looked up in the DB for every request (sessions, API keys, hosts), trusted for a bounded time.

Every request of a logged-in user or an agent needs its session or key, and
most need their host; reading them from the DB each time was a third of a
short query's own cost. Each worker keeps what it read for ``ttl_s``; a
change made elsewhere (another worker, another replica) is therefore seen
within ``ttl_s`` at most (docs/replicas.md, "Bounded staleness"), and one made
through this worker at once: the code that revokes calls ``forget`` or
``forget_all``.
"""

from __future__ import annotations

import time

from flask import current_app

MAX_ENTRIES = 10_000  # sessions and keys, not requests: beyond it, start over rather than grow


class LookupCache:
    """Answers trusted for ``ttl_s`` seconds; forgotten ones stay unanswered from here for as long."""

    def __init__(self, ttl_s: float):
        self.ttl_s = float(ttl_s)
        self._entries: dict[object, tuple[float, object]] = {}
        self._hold_until = 0.0  # after forget_all: nothing is remembered until then

    def get(self, key) -> object | None:
        """The value remembered for ``key``, or None: never looked up, expired or forgotten."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None and time.monotonic() < hit[0] else None

    def put(self, key, value) -> None:
        now = time.monotonic()
        if self.ttl_s <= 0 or now < self._hold_until:
            return
        hit = self._entries.get(key)
        if hit is not None and hit[1] is None and now < hit[0]:
            # Forgotten a moment ago: this read may predate the commit of the revocation.
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now + self.ttl_s, value)

    def forget(self, key) -> None:
        """Stop answering ``key`` from here, and refuse to remember it again for ``ttl_s``."""
        self._entries[key] = (time.monotonic() + self.ttl_s, None)

    def forget_all(self) -> None:
        """Stop answering anything from here, and remember nothing for ``ttl_s`` (a revocation being committed)."""
        self._hold_until = time.monotonic() + self.ttl_s
        self._entries.clear()


def lookup_cache(name: str, setting: str) -> LookupCache:
    """This worker's cache ``name`` of the current app, trusted for the seconds its ``setting`` says."""
    caches = current_app.extensions.setdefault("lookup_caches", {})
    cache = caches.get(name)
    if cache is None:
        cache = caches.setdefault(name, LookupCache(current_app.config[setting]))
    return cache
