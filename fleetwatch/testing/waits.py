"""Free loopback ports and waiting on a condition: how every test and bench gets a service up and a result in."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, for a service about to be started.

    Chosen outside the kernel's ephemeral range: a port from bind(0) can be
    taken by any outgoing connection (a scrape, a client) in the moments
    before the service that was meant to get it binds it. A port is never
    handed out twice by one process, so five calls give five distinct ports.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in range(10000, 32768) if p not in ephemeral and p not in _handed_out]
    for port in random.sample(candidates, len(candidates)):
        if port_free(port, host):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port between 10000 and 32767")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nobody listens on ``port`` right now (a bind succeeds)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(
    check: Callable[[], T],
    timeout_s: float = 30.0,
    what: str = "condition",
    interval_s: float = 0.2,
    process: subprocess.Popen | None = None,
) -> T:
    """Call ``check`` until it returns something truthy and return that; fail if time runs out or ``process`` exits.

    Raises:
        AssertionError: not seen within ``timeout_s``, or ``process`` exited first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode} first")
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not seen within {timeout_s:.0f} s")
        time.sleep(interval_s)
