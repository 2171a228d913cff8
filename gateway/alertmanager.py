"""The gateway's Alertmanager client: the few calls of its v2 API the gateway makes (silences, active alerts).

Built once per app in ``gateway.app.create_app`` and kept on
``app.extensions["alertmanager"]``; every worker process has its own.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import orjson
import urllib3

from gateway.errors import Unavailable

log = logging.getLogger(__name__)


class Alertmanager:
    """Silences (acknowledgement, maintenance windows) and the active alerts, over Alertmanager's v2 API."""

    def __init__(self, url: str, timeout_s: float = 5.0, active_ttl_s: float = 2.0):
        self.url = url.rstrip("/")
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=timeout_s), retries=False)
        # Every read of events asks which acknowledged alerts are still active: one answer
        # serves this worker's reads for a couple of seconds (REQ-API-005's short TTL).
        self._active_ttl_s = active_ttl_s
        self._active: tuple[float, list[dict]] | None = None

    def silence(self, labels: dict, ttl: timedelta, created_by: str, comment: str) -> str:
        """Silence the alert with exactly ``labels`` for ``ttl``; the silence's id."""
        now = datetime.now(UTC)
        exact = [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(labels.items())]
        return self.create_silence(exact, now, now + ttl, created_by, comment)

    def create_silence(self, matchers: list[dict], starts: datetime, ends: datetime, created_by: str, comment: str):
        """A silence of ``matchers`` from ``starts`` (now, if past) to ``ends``; its id.

        Raises:
            Unavailable: Alertmanager did not answer or refused it.
        """
        # An answer about active alerts from before this silence would show them unsilenced.
        self._active = None
        body = {
            "matchers": matchers,
            "startsAt": max(starts, datetime.now(UTC)).isoformat(),
            "endsAt": ends.isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        return self._call("POST", "/api/v2/silences", body)["silenceID"]

    def expire(self, silence_id: str) -> None:
        """End a silence now; one Alertmanager cannot end is left to run out by itself."""
        try:
            self._call("DELETE", f"/api/v2/silence/{silence_id}")
        except Unavailable:
            log.warning("could not expire silence %s; it ends by itself", silence_id)

    def live_silences(self) -> set[str]:
        """Ids of the silences Alertmanager holds as active or pending (not expired).

        Raises:
            Unavailable: Alertmanager did not answer.
        """
        return {s["id"] for s in self._call("GET", "/api/v2/silences") if s["status"]["state"] != "expired"}

    def active_alerts(self) -> list[dict]:
        """Every alert Alertmanager holds as active, silenced or not (v2 API shape, ``status.silencedBy``).

        Raises:
            Unavailable: Alertmanager did not answer.
        """
        now = time.monotonic()
        if self._active is not None and now - self._active[0] < self._active_ttl_s:
            return self._active[1]
        alerts = self._call("GET", "/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true")
        self._active = (now, alerts)
        return alerts

    def active_fingerprints(self) -> set[str]:
        """Fingerprints of every alert Alertmanager holds as active, silenced or not.

        Raises:
            Unavailable: Alertmanager did not answer.
        """
        return {a["fingerprint"] for a in self.active_alerts()}

    def metrics(self) -> str:
        """Alertmanager's own metrics, in the text format.

        Raises:
            Unavailable: Alertmanager did not answer.
        """
        try:
            r = self._http.request("GET", self.url + "/metrics")
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable("Alertmanager does not answer", {"reason": exc.__class__.__name__}) from None
        if r.status != 200:
            raise Unavailable("Alertmanager refused the call", {"status": r.status})
        return r.data.decode()

    def _call(self, method: str, path: str, body: dict | None = None):
        try:
            r = self._http.request(
                method,
                self.url + path,
                body=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"},
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(
                "Alertmanager does not answer", {"alertmanager": self.url, "reason": exc.__class__.__name__}
            ) from None
        if r.status >= 300:
            raise Unavailable("Alertmanager refused the call", {"status": r.status, "body": r.data[:300].decode()})
        return orjson.loads(r.data) if r.data else None
