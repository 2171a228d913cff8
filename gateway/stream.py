"""Live updates (REQ-API-007): ``GET /api/v1/stream``, Server-Sent Events from the DB's event log.

Events: ``host.status`` and ``alert.event`` from the log (gateway/event_log.py),
each with its id, so ``Last-Event-ID`` resumes without loss; ``metrics``, the
latest values of ``?hosts=&metrics=`` from Prometheus at the scrape interval;
a ``: heartbeat`` comment every 15 s; ``end`` when the token expires or its
login ends, and then the stream closes.

Each stream holds one gunicorn thread, idle but for its writes: cli.py gives
every worker STREAM_MAX_PER_WORKER threads for streams beyond THREADS for the
REST API, and a stream beyond that bound is a 503, so streams can never take
the REST API's threads. One ``Tail`` thread per worker reads the log for all
of that worker's streams: 200 streams cost one DB query a second, not 200.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import select
import socket
import ssl
import threading
import time

import marshmallow as ma
from flask import Flask, Response, current_app, g, request
from flask.views import MethodView

from gateway import event_log
from gateway.auth import QUERY_TOKEN_ENDPOINTS, decode_token, live_session, request_token
from gateway.errors import ApiError, Blueprint, Unauthorized, Unavailable
from gateway.promql import selector
from gateway.series import duration_s
from rules_compiler.catalog import CATALOG

blp = Blueprint("stream", __name__, url_prefix="/api/v1", description="Live updates (Server-Sent Events)")

HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_HOSTS, MAX_METRICS = 100, 10
SESSION_RECHECK_S = 30.0  # how soon a logout or a disabled user ends a stream
RING = 5000  # events a worker keeps in memory for its streams; older ones are read from the DB


class Tail:
    """One worker's reader of the event log: polls it once for all the worker's streams and wakes them."""

    def __init__(self, app: Flask):
        self.app = app
        self._cond = threading.Condition()
        self._ids: list[int] = []
        self._events: list[tuple] = []
        self.floor = self.last = 0  # every event with floor < id <= last is in memory
        self._pid = 0

    def ensure_started(self) -> None:
        """Start following the log in this process, if not yet (a forked worker has no thread of its master)."""
        with self._cond:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.floor = self.last = event_log.last_id()
            self._ids, self._events = [], []
        threading.Thread(target=self._run, name="stream-tail", daemon=True).start()

    def _run(self) -> None:
        every = float(self.app.config["STREAM_POLL_S"])
        while True:
            time.sleep(every)
            try:
                with self.app.app_context():
                    rows = event_log.read_after(self.last, 1000)
            except Exception:  # a DB hiccup: streams wait for the next round
                self.app.logger.exception("reading the event log failed")
                continue
            if not rows:
                continue
            with self._cond:
                self._ids += [r[0] for r in rows]
                self._events += rows
                self.last = rows[-1][0]
                if len(self._ids) > RING:
                    cut = len(self._ids) - RING
                    self.floor = self._ids[cut - 1]
                    del self._ids[:cut], self._events[:cut]
                self._cond.notify_all()

    def after(self, cursor: int, timeout_s: float) -> tuple[list[tuple], int] | None:
        """Events past ``cursor`` (waiting up to ``timeout_s`` for one) and the new cursor; None: read the DB."""
        with self._cond:
            if cursor >= self.last:
                self._cond.wait(timeout_s)
            if cursor < self.floor:
                return None
            return self._events[bisect.bisect_right(self._ids, cursor) :], max(cursor, self.last)


class StreamArgs(ma.Schema):
    hosts = ma.fields.String(metadata={"description": "host ids, comma-separated, for `metrics` events"})
    metrics = ma.fields.String(metadata={"description": "catalog metric names, comma-separated, e.g. cpu.utilization"})
    last_event_id = ma.fields.Integer(
        validate=ma.validate.Range(min=0),
        metadata={"description": "resume after this id (the Last-Event-ID header wins)"},
    )
    access_token = ma.fields.String(
        load_only=True, metadata={"description": "the access token, for EventSource, which cannot send headers"}
    )


def _names(text: str, what: str, limit: int, valid) -> list[str]:
    names = [n for n in (p.strip() for p in text.split(",")) if n]
    bad = [n for n in names if not valid(n)]
    if bad or len(names) > limit:
        raise ApiError(f"{what}: up to {limit} valid names, comma-separated", {what: bad or names[limit:]})
    return names


def _last_event_id(args: dict) -> int | None:
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        if not header.isdigit():
            raise ApiError("Last-Event-ID must be an event id (a number)", {"Last-Event-ID": header[:50]})
        return int(header)
    return args.get("last_event_id")


@blp.route("/stream")
class Stream(MethodView):
    @blp.arguments(StreamArgs, location="query")
    @blp.doc(responses={"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}})
    def get(self, args):
        """Server-Sent Events: host.status, alert.event (resumable by Last-Event-ID), metrics; heartbeats."""
        metrics = _names(args.get("metrics", ""), "metrics", MAX_METRICS, CATALOG.__contains__)
        hosts = _names(args.get("hosts", ""), "hosts", MAX_HOSTS, HOST_ID.match)
        if bool(metrics) != bool(hosts):
            raise ApiError("metrics events need both hosts and metrics", {"hosts": hosts, "metrics": metrics})
        claims = decode_token(request_token(), "access")
        app = current_app._get_current_object()
        slots = app.extensions["stream_slots"]
        if not slots.acquire(blocking=False):
            raise Unavailable("this worker holds as many streams as it may; retry", headers={"Retry-After": "3"})
        try:
            tail = app.extensions["stream_tail"]
            tail.ensure_started()
            resume = _last_event_id(args)
            cursor = tail.last if resume is None else resume
            oldest = event_log.oldest_id()
            lost = resume is not None and oldest is not None and resume < oldest - 1
        except BaseException:
            slots.release()
            raise
        hung_up = _hang_up_check(request.environ.get("gunicorn.socket"))
        events = _events(app, tail, claims, g.principal.role == "admin", cursor, lost, hosts, metrics, hung_up)
        response = Response(events, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must pass events on at once
        response.call_on_close(slots.release)
        return response


QUERY_TOKEN_ENDPOINTS.add(f"{blp.name}.{Stream.__name__}")


def _sse(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _logged(row: tuple, admin: bool) -> str:
    event_id, kind, payload, admin_extra = row
    return _sse(kind, {**payload, **(admin_extra or {})} if admin else payload, event_id)


def _hang_up_check(sock):
    """A test of whether the client has gone without writing to it: a dead stream would hold its slot till a write."""
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return lambda: False  # no plain socket to peek at: the next write tells

    def hung_up() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # A client of an event stream sends nothing after its request: readable means EOF.
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return hung_up


def _events(app: Flask, tail: Tail, claims: dict, admin: bool, cursor: int, lost: bool, hosts, metrics, hung_up):
    """The stream's text, event by event, until the token expires, the login ends or the client goes."""
    config = app.config
    yield "retry: 3000\n\n"
    if lost:
        yield _sse("reset", {"reason": "events after Last-Event-ID were purged: reload state with the REST API"})
    beat_every, scrape_s = float(config["STREAM_HEARTBEAT_S"]), duration_s(config["SCRAPE_INTERVAL"])
    now = time.time()
    next_beat, next_check, next_metrics = now + beat_every, now + SESSION_RECHECK_S, now
    serving = app.extensions.get("serving", lambda: True)
    while True:
        now = time.time()
        if hung_up():
            return
        if not serving():
            yield _sse("end", {"reason": "the server is restarting: reconnect with Last-Event-ID"})
            return
        if now >= claims["exp"]:
            yield _sse("end", {"reason": "token expired: reconnect with a fresh access token"})
            return
        if now >= next_check:
            next_check = now + SESSION_RECHECK_S
            try:
                with app.app_context():
                    live_session(claims)
            except Unauthorized as exc:
                yield _sse("end", {"reason": exc.message})
                return
        if metrics and now >= next_metrics:
            next_metrics = now + scrape_s
            yield _sse("metrics", _latest(app, hosts, metrics))
        if now >= next_beat:
            next_beat = now + beat_every
            yield ": heartbeat\n\n"
        wake = min(next_beat, next_check, claims["exp"], next_metrics if metrics else next_beat)
        # At least once a second: a stopping worker must not wait for the next heartbeat to end its streams.
        got = tail.after(cursor, min(1.0, max(0.05, wake - time.time())))
        if got is None:  # fell behind the worker's memory (a long Last-Event-ID replay): from the DB
            with app.app_context():
                rows = event_log.read_after(cursor, 500, upto=tail.last)
            got = rows, rows[-1][0] if rows else tail.last
        rows, cursor = got
        for row in rows:
            yield _logged(row, admin)


def _latest(app: Flask, hosts: list[str], metrics: list[str]) -> dict:
    """The newest value of each series of ``metrics`` on ``hosts``, from the fleet: layer."""
    queries = [selector(CATALOG[m].record, regex={"host_id": hosts}) for m in metrics]
    try:
        results = app.extensions["prometheus"].query_many(queries)
    except ApiError as exc:
        return {"at": time.time(), "error": exc.message, "values": []}
    values = [
        {
            "host_id": s["metric"].get("host_id"),
            "metric": name,
            "labels": {k: v for k, v in s["metric"].items() if k not in ("__name__", "host_id")},
            "value": float(s["value"][1]),
        }
        for name, result in zip(metrics, results, strict=True)
        for s in result
    ]
    return {"at": time.time(), "values": values}
