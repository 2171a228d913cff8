"""What the store's refusals cost: per-sample refusals are bounded in remote writes, others lose no point.

A real HTTP relay on loopback stands between the gateway and a real
Prometheus: it counts remote writes, and for a while answers 404/401/413 as a
receiver that is switched off, misconfigured or behind a strict proxy would.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from exporter.agent import Agent, AgentConfig
from exporter.host import HostCollector
from exporter.push_buffer import PushBuffer
from fleetwatch.testing import services
from fleetwatch.testing.api import api_key, api_session, make_app, relay_key
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port


class Relay(http.server.ThreadingHTTPServer):
    """Forwards POSTs to ``target`` unless ``fail_with`` is set; counts what it answered."""

    daemon_threads = True

    def __init__(self, target: str):
        super().__init__(("127.0.0.1", free_port()), _RelayHandler)
        self.target = target
        self.fail_with: int | None = None
        self.answered: list[int] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/write"


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, answer = self.server.fail_with, b"refused by the relay\n"
        if status is None:
            forward = urllib.request.Request(self.server.target, data=body, method="POST", headers=dict(self.headers))
            try:
                with urllib.request.urlopen(forward, timeout=10) as r:
                    status, answer = r.status, r.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
        self.server.answered.append(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    with services.prometheus(tmp_path_factory.mktemp("prom-refusals") / "data") as server:
        yield server


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_points_prometheus_refuses_cost_a_bounded_number_of_remote_writes(prometheus, tmp_path):
    relay = Relay(f"{prometheus.url}/api/v1/write")
    app = make_app(tmp_path, prometheus.url, REMOTE_WRITE_URL=relay.url, INGEST_MAX_SPLIT_WRITES=16)
    client = app.test_client()
    key = relay_key(client)
    now = int(time.time()) * 1000
    points = [
        {"metric": "gpu.temperature_c", "ts": rfc3339(now - 60_000), "value": 1.0, "labels": {"gpu_index": str(i)}}
        for i in range(400)
    ]

    def push(batch):
        return client.post(
            "/api/v1/ingest/metrics", json={"host_id": "h-split", "metrics": batch}, headers={"X-API-Key": key}
        )

    assert push(points).status_code == 200
    # Other values at each series' newest timestamp: Prometheus refuses every one of them.
    relay.answered.clear()
    r = push([{**p, "value": 2.0} for p in points])
    assert r.status_code == 400, r.get_json()
    details = r.get_json()["error"]["details"]
    assert details["rejected"] == 400 and details["accepted"] == 0
    # Halving down to single samples would take ~800 remote writes; the request is allowed 16 more than its first.
    assert len(relay.answered) <= 1 + 16, len(relay.answered)
    reasons = " ".join(e["reason"] for e in details["errors"])
    assert "refused by the store" in reasons and "not tried alone" in reasons

    # One bad point among good ones is still found within the bound, and its neighbours stored.
    relay.answered.clear()
    fresh = [{"metric": "cpu.load5", "ts": rfc3339(now - 200_000 + 1000 * i), "value": 5.0} for i in range(200)]
    clash = {**points[-1], "value": 3.0}
    r = push([*fresh, clash])
    answer = r.get_json()
    assert r.status_code == 200 and (answer["accepted"], answer["rejected"]) == (200, 1), answer
    assert answer["errors"][0]["index"] == 200 and "refused by the store" in answer["errors"][0]["reason"]
    assert len(relay.answered) <= 1 + 16
    stored = PromClient(prometheus.url).query('count_over_time(fleet:cpu_load5{host_id="h-split"}[10m])')
    assert int(stored[0]["value"][1]) == 200


@pytest.mark.integration
def test_no_point_is_lost_while_the_store_answers_404_401_413(prometheus, tmp_path):
    relay = Relay(f"{prometheus.url}/api/v1/write")
    env = {"FLEETWATCH_REMOTE_WRITE_URL": relay.url}
    with services.gateway(tmp_path, prometheus.url, env=env) as gateway:
        config = AgentConfig(push=gateway.url, api_key=api_key(api_session(gateway.url)), host_id="h-relay")
        buffer = PushBuffer(tmp_path / "buffer.db")
        agent = Agent(config, HostCollector(), buffer)
        start = int(time.time()) - 60
        sampled = []
        for n, fail_with in enumerate((None, 404, 404, 401, 413, None)):
            relay.fail_with = fail_with
            sampled.append((start + 10 * n) * 1000)
            agent.sample_once(start + 10 * n)
            sent = agent.send_once()
            assert sent is (fail_with is None), (fail_with, relay.answered)
            if fail_with is not None:
                assert len(buffer) > 0  # the gateway answered 503: the agent keeps what it could not store
        while len(buffer):
            assert agent.send_once()
    assert {404, 401, 413} <= set(relay.answered)
    series = PromClient(prometheus.url).query('fleet:cpu_load1{host_id="h-relay"}[5m]')
    stored = sorted(round(float(t) * 1000) for s in series for t, _ in s["values"])
    assert stored == sampled
