"""Prometheus remote-write 1.0: a WriteRequest encoded by hand (protobuf + snappy) and POSTed.

Only three messages of ``prompb`` are needed, so they are written directly
rather than through generated protobuf classes:

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // ms since epoch

Check a request by hand: ``promtool`` has no decoder, but Prometheus's own
receiver (``--web.enable-remote-write-receiver``) answers 400 with the reason.
"""

from __future__ import annotations

import struct
import threading

import cramjam
import urllib3

_DOUBLE = struct.Struct("<d")
# Prometheus's refusals of samples themselves: the same bytes will never be taken.
REFUSED_FOR_GOOD = ("too old sample", "out of bounds", "out of order sample", "duplicate sample for timestamp")
SAMPLE_REFUSALS = (*REFUSED_FOR_GOOD, "invalid sample", "invalid labels", "repeated labels", "not unique")


class WriteFailed(Exception):
    """Prometheus did not take the request. ``retry`` says whether the same bytes may succeed later."""

    def __init__(self, message: str, retry: bool, status: int | None = None):
        super().__init__(message)
        self.retry = retry
        self.status = status


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [varint(n) for n in range(1 << 14)]  # field lengths: nearly all are shorter than 16 KiB


def _length(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else varint(n)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _length(len(payload)) + payload


def encode_labels(labels: list[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of one TimeSeries; ``labels`` must be sorted by name, ``__name__`` first."""
    return b"".join(_field(0x0A, _field(0x0A, k.encode()) + _field(0x12, v.encode())) for k, v in labels)


_SAMPLE_PARTS: dict[int, tuple[bytes, bytes]] = {}


def _sample_parts(ts_ms: int) -> tuple[bytes, bytes]:
    """The bytes around a sample's value: its field header, and its timestamp field."""
    # A request's points share few timestamps: each one's parts are made once.
    parts = _SAMPLE_PARTS.get(ts_ms)
    if parts is None:
        if len(_SAMPLE_PARTS) > 100_000:
            _SAMPLE_PARTS.clear()
        # ts 0 is the field's default and left out; negative ones would take 10 bytes: never sent.
        tail = b"\x10" + varint(ts_ms) if ts_ms > 0 else b""
        parts = _SAMPLE_PARTS[ts_ms] = (b"\x12" + bytes((9 + len(tail),)) + b"\x09", tail)
    return parts


def encode_sample(value: float, ts_ms: int) -> bytes:
    """One ``samples`` field of a TimeSeries."""
    head, tail = _sample_parts(ts_ms)
    return head + _DOUBLE.pack(value) + tail


def encode_series(labels: bytes, samples: list[bytes]) -> bytes:
    """One ``timeseries`` field from pre-encoded labels and samples."""
    return _field(0x0A, labels + b"".join(samples))


def encode_timeseries(labels: bytes, samples: list[tuple]) -> bytes:
    """One ``timeseries`` field from pre-encoded labels and ``(ts_ms, value, …)`` tuples.

    The ingest's hot path: an agent's batch is a hundred series of one sample
    each, encoded here in a third of the time encode_series(encode_sample…) takes.
    """
    if len(samples) == 1:
        head, tail = _sample_parts(samples[0][0])
        body = labels + head + _DOUBLE.pack(samples[0][1]) + tail
    else:
        body = labels + b"".join(encode_sample(s[1], s[0]) for s in samples)
    return b"\x0a" + _length(len(body)) + body


class RemoteWriter:
    """POSTs WriteRequests to one receiver (Prometheus, Mimir, VictoriaMetrics, …)."""

    def __init__(self, url: str, timeout_s: float = 10.0, pool_size: int = 8):
        self.url = url
        self._http = urllib3.PoolManager(
            maxsize=pool_size, block=True, timeout=urllib3.Timeout(connect=2.0, read=timeout_s), retries=False
        )

    def write(self, series: list[bytes]) -> None:
        """Send encoded series in one request; return once the receiver stored them.

        Raises:
            WriteFailed: not stored; ``retry`` is False when the receiver refused the samples themselves.
        """
        body = cramjam.snappy.compress_raw(b"".join(series))
        try:
            r = self._http.request(
                "POST",
                self.url,
                body=bytes(body),
                headers={
                    "Content-Encoding": "snappy",
                    "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                },
            )
        except urllib3.exceptions.HTTPError as exc:
            raise WriteFailed(f"no answer from {self.url}: {exc.__class__.__name__}", retry=True) from None
        if r.status < 300:
            return
        reason = r.data.decode(errors="replace").strip()[:300]
        raise WriteFailed(reason or f"HTTP {r.status}", retry=not refused_for_good(r.status, reason), status=r.status)


def refused_for_good(status: int, reason: str) -> bool:
    """Whether an answer refuses the samples themselves, so that sending them again is pointless."""
    # Only Prometheus's own per-sample refusals: 400, or 500 for some it will never take
    # ("too old sample"; retrying those would jam an agent's queue forever). Any other
    # answer (404: the receiver is off; 401/403; 413 from a proxy; 429; 5xx) says nothing
    # about the points, and calling them bad would delete them from the agents' buffers.
    if status == 400:
        return any(m in reason for m in SAMPLE_REFUSALS)
    return status == 500 and any(m in reason for m in REFUSED_FOR_GOOD)


class Refused(WriteFailed):
    """The receiver refused a shared request for a reason that may lie in another writer's series."""


class GroupWriter:
    """Concurrent writers' series share remote-write requests (REQ-INGEST-004: batched writes).

    Group commit, as databases do it: a writer that finds a free slot sends
    at once, alone; writers that come while every slot (``max_in_flight``) has
    a request in flight wait, and the next of them to get a slot sends
    everything that queued meanwhile in one request. A lone agent waits for
    nobody, and under load Prometheus gets a few large requests instead of one
    per agent's batch of 100 points; with two slots, one slow request does not
    hold up every writer behind it. Every writer returns only once its own
    series are stored.
    """

    def __init__(self, writer: RemoteWriter, max_samples: int = 10_000, max_in_flight: int = 2):
        self.writer = writer
        self._max = max_samples
        self._slots = max_in_flight
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._in_flight = 0

    def write(self, series: list[bytes], samples: int) -> None:
        """Store ``series`` (encoded, ``samples`` samples in all), alone or with others' in one request.

        Raises:
            WriteFailed: not stored, as RemoteWriter.write; ``Refused`` when a shared request was
                refused (4xx): this writer's series may be fine, and should be sent alone.
        """
        job = _Job(series, samples)
        with self._cond:
            self._queue.append(job)
        while True:
            with self._cond:
                # Its series already in a request in flight (another writer's): wait for that one.
                while not job.done and (job.taken or self._in_flight >= self._slots):
                    self._cond.wait()
                if job.done:
                    break
                group, count = [], 0
                while self._queue and (not group or count + self._queue[0].samples <= self._max):
                    count += self._queue[0].samples
                    group.append(self._queue.pop(0))
                    group[-1].taken = True
                self._in_flight += 1
            error: BaseException | None = RuntimeError("remote write interrupted")
            try:
                error = self._send(group)
            finally:  # whatever happened, the group hears of it and the slot is freed
                with self._cond:
                    for member in group:
                        member.done, member.error = True, error
                    self._in_flight -= 1
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error

    def _send(self, group: list[_Job]) -> Exception | None:
        try:
            self.writer.write([s for member in group for s in member.series])
        except WriteFailed as exc:
            if exc.retry or len(group) == 1:
                return exc
            return Refused(str(exc), retry=False, status=exc.status)
        except Exception as exc:  # noqa: BLE001 - every waiting writer must hear of it, not only this one
            return exc
        return None


class _Job:
    __slots__ = ("series", "samples", "taken", "done", "error")

    def __init__(self, series: list[bytes], samples: int):
        self.series, self.samples = series, samples
        self.taken, self.done, self.error = False, False, None
