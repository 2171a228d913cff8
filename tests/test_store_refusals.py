"""What the store's refusals cost: only Prometheus's per-sample refusals are for good, others lose no point.

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
from fleetwatch.testing.api import api_key, api_session
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
