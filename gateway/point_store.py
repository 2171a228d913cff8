"""Checked series into Prometheus by remote write: batches, group commit, backpressure, refusals halved (bounded).

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

    def __init__(self, config):
        """``config``: the app's; its INGEST_* bounds are read at each request (a test may lower them)."""
        self._config = config
        self.writer = RemoteWriter(config["REMOTE_WRITE_URL"], config["INGEST_WRITE_TIMEOUT_S"])
        # Requests that arrive while a remote write is in flight share the next one (REQ-INGEST-004).
        self.group = GroupWriter(self.writer, 2 * config["INGEST_WRITE_BATCH"])
        self._lock = threading.Lock()
        self._in_flight = 0  # points of this worker's requests not yet stored

    def store(self, series: list, errors: list, counters) -> None:
        """Store ``series`` of ``(labels, samples)``; samples Prometheus refuses for good go to ``errors``.

        Finding the refused samples of a refused batch takes at most INGEST_MAX_SPLIT_WRITES more
        remote writes; the points still unsent then are refused with their batch's reason.

        Raises:
            Unavailable: this worker already has INGEST_MAX_INFLIGHT_POINTS points in flight (Retry-After: 1),
                or Prometheus does not answer (Retry-After: 5); the agent sends the same request again.
        """
        config = self._config
        max_in_flight, batch = config["INGEST_MAX_INFLIGHT_POINTS"], config["INGEST_WRITE_BATCH"]
        split_writes = config["INGEST_MAX_SPLIT_WRITES"]
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
        stored, culprits = 0, Culprits(self.writer, split_writes)
        try:
            for part in batches(series, batch):
                size = sum(len(samples) for _, samples in part)
                try:
                    self.group.write(_encoded(part), size)
                except Refused as exc:
                    culprits.store_alone(part, errors, exc)  # refused with others' points: alone, then halved
                except WriteFailed as exc:
                    if exc.retry:
                        raise
                    culprits.halve(part, errors, exc)  # refused, alone: its own points are to blame
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


class Culprits:
    """Finds the samples Prometheus refuses in a refused batch, in at most ``budget`` more remote writes."""

    def __init__(self, writer: RemoteWriter, budget: int):
        self.writer = writer
        self.left = budget  # halving 2,000 refused points to single samples would take ~4,000 writes

    def store_alone(self, batch: list, errors: list, refusal: WriteFailed | None = None) -> None:
        """Remote-write ``batch`` of ``(labels, samples)`` alone; samples refused for good go to ``errors``.

        Raises:
            WriteFailed: Prometheus did not answer or failed (5xx): nothing may be acknowledged.
        """
        if self.left <= 0:
            # Out of writes: the batch's points are refused with the reason their batch was, unsent.
            why = f"refused by the store with others in its batch ({refusal}); not tried alone"
            for _, samples in batch:
                errors.extend({"index": s[2], "reason": why[:300]} for s in samples)
            return
        self.left -= 1
        try:
            self.writer.write(_encoded(batch))
        except WriteFailed as exc:
            if exc.retry:
                raise
            self.halve(batch, errors, exc)

    def halve(self, batch: list, errors: list, refusal: WriteFailed) -> None:
        """``batch`` was refused: store it in halves until the culprits are alone, and report those."""
        # Prometheus 2.x refuses a whole request for one bad sample (e.g. a second value at a
        # series' newest timestamp): halve until the culprits are alone, store the rest.
        single = [(labels, [s]) for labels, samples in batch for s in samples]
        if len(single) == 1:
            errors.append({"index": single[0][1][0][2], "reason": f"refused by the store: {refusal}"[:300]})
            return
        middle = len(single) // 2
        self.store_alone(single[:middle], errors, refusal)
        self.store_alone(single[middle:], errors, refusal)
