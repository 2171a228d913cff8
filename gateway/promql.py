"""Reading Prometheus: PromQL built from escaped parts, and a small HTTP client with a short-TTL cache."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import orjson
import urllib3

from gateway.errors import ApiError, Unavailable
from rules_compiler.promql import is_label_name, quote, regex_any


def selector(metric: str, matchers: dict[str, str] | None = None, regex: dict[str, list[str]] | None = None) -> str:
    """``metric{a="x", b=~"y|z"}`` with every label name checked and every value escaped.

    Raises:
        ApiError: a label name that PromQL would not accept (400).
    """
    parts = []
    for name, value in (matchers or {}).items():
        _check_label(name)
        parts.append(f"{name}={quote(value)}")
    for name, values in (regex or {}).items():
        _check_label(name)
        parts.append(f"{name}=~{regex_any(values)}")
    return f"{metric}{{{','.join(parts)}}}"


def _check_label(name: str) -> None:
    if not is_label_name(name):
        raise ApiError(f"invalid label name {name!r}", {"label": name})


class Prometheus:
    """The HTTP query API of one Prometheus (or anything that speaks it: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(self, url: str, timeout_s: float = 10.0, cache_ttl_s: float = 2.0, cache_size: int = 512):
        self.url = url.rstrip("/")
        self._ttl = cache_ttl_s
        self._size = cache_size
        # urllib3's pool directly: requests' per-call machinery (proxy lookup, hooks,
        # cookie jar) cost more than a whole query of Prometheus's own.
        self._http = urllib3.PoolManager(
            maxsize=16, timeout=urllib3.Timeout(connect=2.0, read=timeout_s), retries=False
        )
        self._cache: OrderedDict[tuple, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=10, thread_name_prefix="promql")

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Instant query: a list of {"metric": {...}, "value": [ts, "v"]}."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params)

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict]:
        """Range query: a list of {"metric": {...}, "values": [[ts, "v"], …]}."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return self._get("/api/v1/query_range", params)

    def query_many(self, queries: list[str]) -> list[list[dict]]:
        """Several instant queries at once: the answer takes as long as the slowest, not their sum."""
        return list(self._pool.map(self.query, queries))

    def ready(self) -> bool:
        try:
            status = self._http.request("GET", f"{self.url}/-/ready", timeout=2.0).status
            if status in (400, 404):
                # Behind a path prefix (VictoriaMetrics' /prometheus, a cluster's /select/0/prometheus)
                # there is no /-/ready: a query that needs no data says the same.
                status = self._http.request(
                    "GET", f"{self.url}/api/v1/query", fields={"query": "1"}, timeout=2.0
                ).status
            return status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def _get(self, path: str, params: dict) -> list[dict]:
        # Only instant queries at "now" repeat within the TTL (REQ-API-005: 1-5 s); a range
        # query's start and end change with every call, so caching it would only evict those.
        key = (path, tuple(sorted(params.items()))) if path == "/api/v1/query" and "time" not in params else None
        now = time.monotonic()
        if key is not None:
            with self._lock:
                hit = self._cache.get(key)
                if hit and now - hit[0] < self._ttl:
                    return hit[1]
        try:
            r = self._http.request("GET", f"{self.url}{path}", fields=params)
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(
                "Prometheus does not answer",
                {"prometheus": self.url, "reason": exc.__class__.__name__},
                headers={"Retry-After": "5"},
            ) from None
        if r.status >= 500 or r.status == 429:
            raise Unavailable("Prometheus failed the query", {"status": r.status}, headers={"Retry-After": "5"})
        body = orjson.loads(r.data)
        if body.get("status") != "success":
            # Our queries are built, not typed by users: a rejected one is our bug, not theirs.
            raise ApiError("Prometheus rejected a query", {"error": body.get("error")}, status=502)
        result = body["data"]["result"]
        if key is not None:
            with self._lock:
                self._cache[key] = (now, result)
                self._cache.move_to_end(key)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return result
