"""The push agent against a real gateway (gunicorn) and Prometheus, through outages of each (AC-BE-008)."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from exporter.agent import Agent, AgentConfig, load_yaml, parse_duration
from exporter.catalog_points import Translator
from exporter.host import HostCollector
from exporter.push_buffer import PushBuffer
from exporter.registry import ExporterConfig, build_registry
from fleetwatch.testing import services
from fleetwatch.testing.api import api_key, api_session
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.tls import self_signed_certificate
from fleetwatch.testing.waits import wait_until
from rules_compiler.catalog import resolve


@pytest.fixture
def world(tmp_path):
    """A Prometheus and a gateway (gunicorn, one worker) of this test's own; each can be stopped and restarted."""
    with services.prometheus(tmp_path / "prom" / "data") as prom, services.gateway(tmp_path, prom.url) as gateway:
        yield prom, gateway


def stored_ms(prom: PromClient, promql: str) -> list[int]:
    return [round(float(t) * 1000) for s in prom.query(promql) for t, _ in s["values"]]


def test_no_point_is_lost_or_doubled_across_gateway_and_prometheus_outages(world, tmp_path):
    prom, gateway = world
    log = tmp_path / "agent.log"
    key = api_key(api_session(gateway.url))
    with open(log, "wb") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "--push", gateway.url, "--api-key", key,
             "--interval", "1s", "--host-id", "h-agent", "--buffer", str(tmp_path / "buffer.db"),
             "--no-gpu", "--no-processes", "--log-level", "debug"],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    client = PromClient(prom.url)

    def sampled() -> list[int]:
        return [_ms(m) for m in re.findall(r"sampled \d+ points at (\S+)", log.read_text())]

    def all_stored_but_the_last_two() -> bool:
        return set(sampled()[:-2]) <= set(stored_ms(client, 'fleet:mem_used_pct{host_id="h-agent"}[5m]'))

    def an_outage_of(part: services.Server, symptom: str) -> None:
        """``part`` down until the agent has seen ``symptom`` and sampled four times meanwhile; then back."""
        part.stop()
        before = len(sampled())
        wait_until(lambda: symptom in log.read_text() and len(sampled()) >= before + 4, 30, f"{symptom!r} in the log")
        part.up()
        # The agent sends its backlog; then everything it sampled up to a moment ago is stored.
        wait_until(all_stored_but_the_last_two, 30, "the backlog stored")

    try:
        client.wait_for('fleet:mem_used_pct{host_id="h-agent"}', 20)
        an_outage_of(gateway, "no answer from")
        an_outage_of(prom, "gateway answered 503")  # Prometheus's outage reaches the agent as 503s
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
    assert agent.returncode == 0, log.read_text()[-2000:]
    assert len(sampled()) >= 10  # four in each outage, and more before, between and after
    stored = stored_ms(client, 'fleet:mem_used_pct{host_id="h-agent"}[5m]')
    # Every point of every sample but the last two (maybe still queued at the stop) is there,
    # at the time it was sampled, once.
    assert sorted(set(stored)) == stored
    assert set(sampled()[:-2]) <= set(stored)
    assert set(stored) <= set(sampled())
    cpu = client.query('count_over_time(fleet:cpu_utilization{host_id="h-agent"}[5m])')
    assert int(cpu[0]["value"][1]) >= len(sampled()) - 3  # rates need a previous sample: all but the first
    host = api_session(gateway.url).get(f"{gateway.url}/api/v1/hosts/h-agent", timeout=10).json()["host"]
    # Discovered by its first push, kept alive by heartbeats; nothing to scrape.
    assert host["exporter"] == "push" and host["last_seen_at"]
    assert not any("agent" in r for r in host["status_reasons"]), host["status_reasons"]


def _ms(text: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(text).timestamp() * 1000)


def test_buffer_keeps_order_and_drops_the_oldest_when_full(tmp_path, caplog):
    buffer = PushBuffer(tmp_path / "b.db", max_points=1000)
    with caplog.at_level(logging.WARNING):
        for start in range(0, 1200, 100):
            buffer.append([f'{{"n": {i}}}' for i in range(start, start + 100)])
    assert len(buffer) == 1000 and buffer.dropped == 200
    assert sum("buffer full" in r.message for r in caplog.records) == 1
    last, points = buffer.oldest(100)
    assert points[0] == '{"n": 200}' and points[-1] == '{"n": 299}'
    buffer.remove_through(last)
    buffer.close()
    reopened = PushBuffer(tmp_path / "b.db", max_points=1000)  # durable: a restarted agent resumes
    assert len(reopened) == 900 and reopened.oldest(1)[1] == ['{"n": 300}']


def test_translated_points_use_catalog_names_only():
    # The registry the agent is given: host, disks and NICs come from different collectors.
    translator, collector = Translator(), build_registry(ExporterConfig(gpu=False, processes=False))[0]
    translator.points(collector.collect(), time.time())
    time.sleep(0.2)
    points = translator.points(collector.collect(), time.time())
    names = {name for name, _, _ in points}
    assert {"cpu.utilization", "mem.used_pct", "cpu.load1", "disk.used_pct", "net.rx_mbps"} <= names
    for name, _, labels in points:
        entry, implied = resolve(name)
        assert set(labels) | set(implied) <= set(entry.labels), (name, labels)
    cpu = next(v for n, v, _ in points if n == "cpu.utilization")
    assert 0 <= cpu <= 100


def test_config_from_yaml_and_durations(tmp_path):
    path = tmp_path / "agent.yml"
    path.write_text("push: https://gw.example\napi-key: fwk_x\nhost_id: h1\ninterval: 10s\nca_file: /etc/ca.pem\n")
    config = AgentConfig(**load_yaml(str(path)))
    assert (config.interval_s, config.ca_file, config.batch, config.heartbeat_s) == (10.0, "/etc/ca.pem", 100, 30.0)
    assert parse_duration("500ms") == 0.5 and parse_duration("1m") == 60
    path.write_text("push: x\nverify: false\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_yaml(str(path))


@pytest.mark.integration
def test_the_agent_pushes_over_tls_only_to_a_certificate_it_trusts(tmp_path, caplog):
    """The gateway serving HTTPS itself; the agent with --ca-file gets through, without it nothing leaves."""
    cert, key = self_signed_certificate(tmp_path)
    prom = services.prometheus(tmp_path / "prom" / "data")
    gateway = services.gateway(tmp_path, prom.url, tls=(cert, key))
    with prom, gateway:
        key_text = api_key(api_session(gateway.url, verify=str(cert)), "tls")

        def agent(ca_file, name):
            config = AgentConfig(push=gateway.url, api_key=key_text, host_id="tls-host", ca_file=ca_file)
            buffer = PushBuffer(str(tmp_path / f"{name}.db"), 10_000)
            return Agent(config, HostCollector(), buffer), buffer

        untrusting, kept = agent(None, "untrusting")  # the system's CAs: a self-signed gateway is refused
        untrusting.sample_once(time.time())
        with caplog.at_level(logging.WARNING, logger="exporter.agent"):
            assert untrusting.send_once() is False
        assert "certificate verify failed" in caplog.text
        assert kept.oldest(10_000)[1], "the points stay buffered"

        trusting, sent = agent(str(cert), "trusting")
        trusting.sample_once(time.time())
        assert trusting.send_once() is True
        assert sent.oldest(10_000)[1] == []
        PromClient(prom.url).wait_for('fleet:cpu_load1{host_id="tls-host"}', timeout_s=20)


def test_agents_sample_at_the_interval_an_admin_sets_on_the_gateway(world, tmp_path):
    """REQ-AGENT-003: the interval is pushed with the heartbeat's answer; unset, each agent keeps its own."""
    prom, gateway = world
    admin = api_session(gateway.url).headers
    url = f"{gateway.url}/api/v1/agents/config"
    assert requests.get(url, headers=admin, timeout=10).json() == {}
    bad = requests.put(url, json={"interval_s": 0.2, "heartbeat_s": 10}, headers=admin, timeout=10)
    assert bad.status_code == 400 and "interval_s" in bad.json()["error"]["details"]["json"], bad.json()
    assert requests.get(url, headers=admin, timeout=10).json() == {}  # a refused change changes nothing
    r = requests.put(url, json={"interval_s": 1, "heartbeat_s": 10}, headers=admin, timeout=10)
    assert r.status_code == 200 and r.json() == {"interval_s": 1.0, "heartbeat_s": 10.0}

    config = AgentConfig(push=gateway.url, api_key=api_key(api_session(gateway.url)), host_id="h-tuned", interval_s=60)
    agent = Agent(config, HostCollector(), PushBuffer(str(tmp_path / "tuned.db"), 10_000)).start()
    try:
        # Its own interval is a minute; the gateway's answer to its first heartbeat makes it a second.
        PromClient(prom.url).wait_for('count_over_time(fleet:cpu_load1{host_id="h-tuned"}[1m]) >= 5', 20)
        assert (config.interval_s, config.heartbeat_s) == (1.0, 10.0)
        requests.put(url, json={}, headers=admin, timeout=10).raise_for_status()
        assert agent.heartbeat() and (config.interval_s, config.heartbeat_s) == (60.0, 30.0)
    finally:
        agent.stop()
    audit = requests.get(f"{gateway.url}/api/v1/audit?action=agent_config_update", headers=admin, timeout=10)
    assert [e["details"] for e in audit.json()["events"]] == [{}, {"interval_s": 1.0, "heartbeat_s": 10.0}]
