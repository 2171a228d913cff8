"""The harness the tests and benches share: waits, ports, and servers that stop and come back with their data."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fleetwatch.testing import services
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until
from gateway.remote_write import RemoteWriter, encode_labels, encode_sample, encode_series


def test_wait_until_returns_what_the_check_found_once_it_finds_it():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "found"), 5, interval_s=0.01) == "found"
    assert len(calls) == 3


def test_wait_until_says_what_it_waited_for_when_time_runs_out():
    with pytest.raises(AssertionError, match="the moon not seen within 0 s"):
        wait_until(lambda: None, 0.05, "the moon", 0.01)


def test_wait_until_stops_at_once_when_the_process_it_waits_on_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="exited with 3"):
        wait_until(lambda: None, 30, "an answer", 0.01, process=proc)
    assert time.monotonic() - t0 < 1


def test_free_ports_are_distinct_and_outside_the_ephemeral_range():
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert not any(low <= p <= high for p in ports)


@pytest.mark.integration
def test_a_stopped_prometheus_comes_back_on_its_port_with_its_data(tmp_path):
    prom = services.prometheus(tmp_path / "data").up()
    try:
        url = prom.url
        now_ms = int(time.time() * 1000)
        labels = encode_labels([("__name__", "harness_probe"), ("host_id", "h")])
        RemoteWriter(f"{url}/api/v1/write").write([encode_series(labels, [encode_sample(7, now_ms)])])
        prom.stop()
        assert prom.process.returncode == 0
        prom.up()
        assert prom.url == url
        (probe,) = PromClient(url).wait_for("harness_probe")
        assert probe["value"][1] == "7"
    finally:
        prom.stop()


@pytest.mark.integration
def test_alertmanager_starts_with_the_config_it_is_given(tmp_path):
    config = "route: {receiver: nobody}\nreceivers: [{name: nobody}]\n"
    with services.alertmanager(tmp_path / "am", config) as am:
        status = requests.get(f"{am.url}/api/v2/status", timeout=10).json()
    assert "receiver: nobody" in status["config"]["original"]
