"""Checked series into Prometheus by remote write: batches, group commit, backpressure, refusals halved.

A request is answered 2xx only after Prometheus took its valid points, and
503 + Retry-After when Prometheus does not answer, so the agent keeps them and
sends them again. Sending again is safe (REQ-INGEST-005): Prometheus keeps one
sample per series and timestamp, and drops a resent identical sample without
storing it twice.
"""

from __future__ import annotations

import logging
import threading

from gateway.errors import Unavailable
from gateway.remote_write import GroupWriter, Refused, RemoteWriter, WriteFailed, encode_timeseries

log = logging.getLogger(__name__)


class PointStore:
    """One worker process's way into Prometheus for pushed points; built by the app factory."""

    def __init__(self, url: str, timeout_s: float, batch: int):
        self.writer = RemoteWriter(url, timeout_s)
        # Requests that arrive while a remote write is in flight share the next one (REQ-INGEST-004).
        self.group = GroupWriter(self.writer, 2 * batch)
        self._lock = threading.Lock()
        self._in_flight = 0  # points of this worker's requests not yet stored

    def store(self, series: list, errors: list, counters, max_in_flight: int, batch: int) -> None:
        """Store ``series`` of ``(labels, samples)``; samples Prometheus refuses for good go to ``errors``.

        Raises:
            Unavailable: this worker already has ``max_in_flight`` points in flight (Retry-After: 1),
                or Prometheus does not answer (Retry-After: 5); the agent sends the same request again.
        """
        total = sum(len(samples) for _, samples in series)
        with self._lock:
            refused = self._in_flight + total > max_in_flight
            if not refused:
                self._in_flight += total
        if refused:
            counters.ingest_points.labels("refused").inc(total)
            counters.ingest_errors.labels("backpressure").inc()
            raise Unavailable(
                "ingest is at capacity; send again later", {"points": total}, headers={"Retry-After": "1"}
            )
        stored = 0
        try:
            for part in batches(series, batch):
                size = sum(len(samples) for _, samples in part)
                try:
                    self.group.write(_encoded(part), size)
                except Refused:
                    store_alone(self.writer, part, errors)  # refused with others' points: alone, then halved
                except WriteFailed as exc:
                    if exc.retry:
                        raise
                    halve(self.writer, part, errors, exc)  # refused, alone: its own points are to blame
                stored += size
        except WriteFailed as exc:
            counters.ingest_points.labels("failed").inc(total - stored)
            counters.ingest_errors.labels("store_unavailable").inc()
            log.warning("remote write failed: %s", exc)
            raise Unavailable(
                "the metric store does not answer; nothing is lost if you send the same request again",
                {"reason": str(exc)[:300], "stored_before_failure": stored},
                headers={"Retry-After": "5"},
            ) from None
        finally:
            with self._lock:
                self._in_flight -= total


def batches(series: list, size: int):
    """Runs of whole series (a longer one cut) of about ``size`` samples: one remote-write request each."""
    batch, count = [], 0
    for labels, samples in series:
        for start in range(0, len(samples), size):
            part = samples[start : start + size]
            batch.append((labels, part))
            count += len(part)
            if count >= size:
                yield batch
                batch, count = [], 0
    if batch:
        yield batch


def _encoded(batch: list) -> list[bytes]:
    return [encode_timeseries(labels, samples) for labels, samples in batch]


def store_alone(writer: RemoteWriter, batch: list, errors: list) -> None:
    """Remote-write ``batch`` of ``(labels, samples)`` alone; samples Prometheus refuses (4xx) go to ``errors``.

    Raises:
        WriteFailed: Prometheus did not answer or failed (5xx): nothing may be acknowledged.
    """
    try:
        writer.write(_encoded(batch))
    except WriteFailed as exc:
        if exc.retry:
            raise
        halve(writer, batch, errors, exc)


def halve(writer: RemoteWriter, batch: list, errors: list, refusal: WriteFailed) -> None:
    """``batch`` was refused (4xx): store it in halves until the culprits are alone, and report those."""
    # Prometheus 2.x refuses a whole request for one bad sample (e.g. older than its
    # out-of-order window): halve until the culprits are alone, store the rest.
    single = [(labels, [s]) for labels, samples in batch for s in samples]
    if len(single) == 1:
        errors.append({"index": single[0][1][0][2], "reason": f"refused by the store: {refusal}"[:300]})
        return
    middle = len(single) // 2
    store_alone(writer, single[:middle], errors)
    store_alone(writer, single[middle:], errors)
