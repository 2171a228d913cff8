"""Off-scrape-path sampling for slow sources (process scans, NVML).

A scrape must never wait on a source that can take tens of milliseconds: a
``Sampler`` calls its function on a daemon thread every ``interval`` seconds
and the collector serves the newest result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Sample(NamedTuple, Generic[T]):
    value: T
    taken_at: float  # Unix time, seconds


class SampleFailed(RuntimeError):
    """The newest attempt to sample raised; the scrape reports the collector as failed."""


class Sampler(Generic[T]):
    """Calls ``fn`` every ``interval`` seconds on a daemon thread and keeps the newest result."""

    def __init__(self, name: str, fn: Callable[[], T], interval: float, clock=time.time):
        self.name = name
        self._fn = fn
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._sample: Sample[T] | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_now(self) -> None:
        """Take one sample on the calling thread (used at start and in tests)."""
        try:
            value = self._fn()
        except Exception as exc:  # noqa: BLE001 - any source failure is reported, not fatal
            with self._lock:
                if self._error is None or type(self._error) is not type(exc):
                    log.warning("sampler %s failed: %s", self.name, exc)
                self._error = exc
            return
        with self._lock:
            if self._error is not None:
                log.info("sampler %s recovered", self.name)
            self._sample = Sample(value, self._clock())
            self._error = None

    def start(self) -> Sampler[T]:
        """Sample once synchronously, so the first scrape has data, then keep sampling."""
        self.sample_now()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def latest(self) -> Sample[T] | None:
        """The newest sample, or None before the first one.

        Raises:
            SampleFailed: the newest attempt raised (the previous value is stale).
        """
        with self._lock:
            if self._error is not None:
                raise SampleFailed(f"{self.name}: {self._error}") from self._error
            return self._sample

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample_now()


class SampledCollector:
    """A collector whose source is read off the scrape path: a subclass sets ``_sampler``; scrapes serve its newest.

    client_python's collector protocol (``describe``/``collect``) plus ``start``/``stop``
    for the background thread, so the registry and the tests drive every sampled
    source the same way.
    """

    _sampler: Sampler

    @property
    def sampler(self) -> Sampler:
        """The background sampler (tests call ``sample_now()`` on it)."""
        return self._sampler

    def start(self):
        """Read the source once now, then every interval on a daemon thread."""
        self._sampler.start()
        return self

    def stop(self) -> None:
        """Stop the background sampling."""
        self._sampler.stop()

    def describe(self) -> list:
        return []
