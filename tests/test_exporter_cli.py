"""fleetwatch-exporter as a user starts it: flags, errors, serving, stopping."""

from __future__ import annotations

import socket
import subprocess

import pytest
import requests

from fleetwatch.testing import services


def run(exporter_cmd, *args, timeout=20):
    return subprocess.run([*exporter_cmd, *args], capture_output=True, text=True, timeout=timeout)


def test_bad_flag_is_a_clear_error(exporter_cmd):
    r = run(exporter_cmd, "--top-n", "0")
    assert r.returncode == 2
    assert "--top-n: must be between 1 and 100" in r.stderr


def test_bad_listen_address_is_a_clear_error(exporter_cmd):
    r = run(exporter_cmd, "--listen", "localhost")
    assert r.returncode == 2
    assert "expected HOST:PORT" in r.stderr


def test_unknown_flag_is_refused(exporter_cmd):
    r = run(exporter_cmd, "--collector.bogus")
    assert r.returncode == 2
    assert "unrecognized arguments: --collector.bogus" in r.stderr


def test_taken_port_is_a_clear_error(exporter_cmd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(exporter_cmd, f"--listen=127.0.0.1:{port}", "--no-gpu")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Address already in use" in r.stderr


@pytest.mark.integration
def test_serves_then_stops_cleanly_on_sigterm(tmp_path):
    server = services.exporter(tmp_path).up()
    try:
        body = requests.get(server.url, timeout=5).text
        assert "node_cpu_seconds_total" in body
        assert 'fleet_exporter_collector_success{collector="host"} 1.0' in body
        assert "process_resident_memory_bytes" in body  # the exporter's own footprint
    finally:
        server.stop()  # SIGTERM
    assert server.process.returncode == 0, server.log_tail()


@pytest.mark.integration
def test_collectors_can_be_switched_off(tmp_path):
    with services.exporter(tmp_path, "--no-host", "--no-gpu") as server:
        body = requests.get(server.url, timeout=5).text
    assert "node_cpu_seconds_total" not in body
    assert 'collector="host"' not in body
    assert 'fleet_exporter_collector_success{collector="processes"} 1.0' in body
