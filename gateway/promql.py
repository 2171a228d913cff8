"""Reading Prometheus: PromQL built from escaped parts, and a small HTTP client with a short-TTL cache."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import orjson

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


def any_of(metrics: list[str], regex: dict[str, list[str]] | None = None) -> str:
    """``{__name__=~"m1|m2", b=~"y|z"}``: one selector for several series names (a label
    name checked and every value escaped as by ``selector``, which refuses the reserved ``__name__``)."""
    matchers = selector("", regex=regex)[1:-1]
    return f"{{__name__=~{regex_any(metrics)}{',' if matchers else ''}{matchers}}}"


def _check_label(name: str) -> None:
    if not is_label_name(name):
        raise ApiError(f"invalid label name {name!r}", {"label": name})


CONNECT_TIMEOUT_S = 2.0


class _Connection(threading.local):
    """One keep-alive connection per thread (gunicorn's and query_many's), made again in a forked worker."""

    conn: http.client.HTTPConnection | None = None
    pid = 0


class Prometheus:
    """The HTTP query API of one Prometheus (or anything that speaks it: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(self, url: str, timeout_s: float = 10.0, cache_ttl_s: float = 2.0, cache_size: int = 512):
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path
        self._timeout_s = timeout_s
        self._ttl = cache_ttl_s
        self._size = cache_size
        self._local = _Connection()
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
            status, _ = self._request("/-/ready", {}, read_timeout_s=2.0)
            if status in (400, 404):
                # Behind a path prefix (VictoriaMetrics' /prometheus, a cluster's /select/0/prometheus)
                # there is no /-/ready: a query that needs no data says the same.
                status, _ = self._request("/api/v1/query", {"query": "1"}, read_timeout_s=2.0)
            return status == 200
        except (OSError, http.client.HTTPException):
            return False

    def _request(self, path: str, params: dict, read_timeout_s: float | None = None) -> tuple[int, bytes]:
        """``path`` on this thread's connection, the parameters (a query) POSTed as a form: the status and the body.

        POST, not GET: a page of 1,000 hosts names them in its queries, and in a URL
        that passed the 1 MiB Prometheus's server takes for a request's head.
        http.client on a kept-alive connection, not urllib3's pool: urllib3's
        per-call machinery (URL parsing, pool lookup, response wrapping) took more
        CPU than the rest of a 1 h query's answer (docs/benchmarks.md). A
        connection the server closed while idle is made again, once.
        """
        target, body = f"{self._prefix}{path}", urlencode(params).encode() if params else None
        timeout_s = read_timeout_s or self._timeout_s
        conn, reused = self._connection()
        try:
            return _exchange(conn, target, body, timeout_s)
        except ConnectionError:  # reset, broken pipe, or closed before answering (RemoteDisconnected)
            if not reused:
                raise
        return _exchange(self._connection()[0], target, body, timeout_s)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        local = self._local
        conn = local.conn
        if conn is None or local.pid != os.getpid():
            make = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = local.conn = make(self._host, self._port, timeout=CONNECT_TIMEOUT_S)
            local.pid = os.getpid()
        if conn.sock is not None:
            return conn, True
        conn.connect()  # with TCP_NODELAY, as http.client does
        return conn, False

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
            status, data = self._request(path, params)
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(
                "Prometheus does not answer",
                {"prometheus": self.url, "reason": exc.__class__.__name__},
                headers={"Retry-After": "5"},
            ) from None
        if status >= 500 or status == 429:
            raise Unavailable("Prometheus failed the query", {"status": status}, headers={"Retry-After": "5"})
        body = orjson.loads(data)
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


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _exchange(conn: http.client.HTTPConnection, target: str, form: bytes | None, timeout_s: float) -> tuple[int, bytes]:
    conn.sock.settimeout(timeout_s)
    try:
        if form is None:
            conn.request("GET", target)
        else:
            conn.request("POST", target, body=form, headers=_FORM)
        response = conn.getresponse()
        body = response.read()
    except BaseException:
        conn.close()  # a half-sent request or half-read answer: the connection is in no state to reuse
        raise
    if response.will_close:
        conn.close()
    return response.status, body
