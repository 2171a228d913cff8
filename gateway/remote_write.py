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

import cramjam
import urllib3

_DOUBLE = struct.Struct("<d")
REFUSED_FOR_GOOD = ("too old sample", "out of bounds", "out of order sample", "duplicate sample for timestamp")


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


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_labels(labels: list[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of one TimeSeries; ``labels`` must be sorted by name, ``__name__`` first."""
    return b"".join(_field(0x0A, _field(0x0A, k.encode()) + _field(0x12, v.encode())) for k, v in labels)


_TS_TAIL: dict[int, bytes] = {}


def encode_sample(value: float, ts_ms: int) -> bytes:
    """One ``samples`` field of a TimeSeries."""
    # A request's points share few timestamps: each one's varint is made once.
    tail = _TS_TAIL.get(ts_ms)
    if tail is None:
        if len(_TS_TAIL) > 100_000:
            _TS_TAIL.clear()
        # ts 0 is the field's default and left out; negative ones would take 10 bytes: never sent.
        tail = _TS_TAIL[ts_ms] = b"\x10" + varint(ts_ms) if ts_ms > 0 else b""
    return b"\x12" + bytes((9 + len(tail),)) + b"\x09" + _DOUBLE.pack(value) + tail


def encode_series(labels: bytes, samples: list[bytes]) -> bytes:
    """One ``timeseries`` field from pre-encoded labels and samples."""
    return _field(0x0A, labels + b"".join(samples))


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
            WriteFailed: not stored; ``retry`` is False when the receiver refused the data itself (4xx).
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
        # Prometheus 2.x answers 500 for some samples it will never take ("too old sample"):
        # retrying those would jam an agent's queue forever.
        retry = (r.status >= 500 or r.status == 429) and not any(m in reason for m in REFUSED_FOR_GOOD)
        raise WriteFailed(reason or f"HTTP {r.status}", retry=retry, status=r.status)
