"""The kernel clock's discipline (NTP/PTP sync state) through adjtimex(2): node_exporter's timex collector."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

TIME_ERROR = 5  # adjtimex's return value while the clock is not synchronised
STA_NANO = 0x2000  # offset and jitter are in ns rather than µs
PPM16 = 1_000_000.0 * 65536.0  # freq, ppsfreq, stabil: ppm with a 16-bit fraction


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h>; natural alignment gives the kernel's padding."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def adjtimex() -> tuple[int, Timex]:
    """Read (never set: modes is 0) the kernel clock's state; (clock state, struct timex)."""
    tx = Timex()
    state = _libc().adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return state, tx


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class TimexCollector:
    """Clock offset, frequency adjustment, error bounds, PPS counters and sync status.

    Check by hand: ``curl -s localhost:9101/metrics | grep ^node_timex_sync_status``::

        # TYPE node_timex_sync_status gauge
        node_timex_sync_status 1.0
    """

    def __init__(self, read: Callable[[], tuple[int, Timex]] = adjtimex):
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state, tx = self._read()
        per_second = 1e9 if tx.status & STA_NANO else 1e6
        synced = 0 if state == TIME_ERROR else 1
        gauges = (
            ("sync_status", "Is clock synchronized to a reliable server (1 = yes, 0 = no).", synced),
            ("offset_seconds", "Time offset in between local system and reference clock.", tx.offset / per_second),
            ("frequency_adjustment_ratio", "Local clock frequency adjustment.", 1 + tx.freq / PPM16),
            ("maxerror_seconds", "Maximum error in seconds.", tx.maxerror / 1e6),
            ("estimated_error_seconds", "Estimated error in seconds.", tx.esterror / 1e6),
            ("status", "Value of the status array bits.", tx.status),
            ("loop_time_constant", "Phase-locked loop time constant.", tx.constant),
            ("tick_seconds", "Seconds between clock ticks.", tx.tick / 1e6),
            ("pps_frequency_hertz", "Pulse per second frequency.", tx.ppsfreq / PPM16),
            ("pps_jitter_seconds", "Pulse per second jitter.", tx.jitter / per_second),
            ("pps_shift_seconds", "Pulse per second interval duration.", tx.shift),
            (
                "pps_stability_hertz",
                "Pulse per second stability, average of recent frequency changes.",
                tx.stabil / PPM16,
            ),
            ("tai_offset_seconds", "International Atomic Time (TAI) offset.", tx.tai),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"node_timex_{name}", doc, value=value)
        counters = (
            ("pps_jitter", "Pulse per second count of jitter limit exceeded events.", tx.jitcnt),
            ("pps_calibration", "Pulse per second count of calibration intervals.", tx.calcnt),
            ("pps_error", "Pulse per second count of calibration errors.", tx.errcnt),
            ("pps_stability_exceeded", "Pulse per second count of stability limit exceeded events.", tx.stbcnt),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(f"node_timex_{name}", doc, value=value)
