"""Fixtures that run the real parts: Prometheus, Alertmanager, node_exporter and our exporter on loopback.

How they start lives in fleetwatch.testing, shared with bench/; here they are
only given a scope. A test that uses one of SERVICE_FIXTURES, directly or
through another fixture, is marked ``integration`` (`pytest -m "not integration"`
leaves it out).
"""

from __future__ import annotations

import json
import sys

import pytest

from fleetwatch.stack import Stack
from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app
from fleetwatch.testing.mail import Mailbox
from fleetwatch.testing.postgres import Postgres
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.stack import stack_config

# Fixtures that start a real service (here and in test modules); every test needing one is an integration test.
SERVICE_FIXTURES = {
    "stack",
    "fresh_stack",
    "node_exporter",
    "postgres",
    "mailbox",
    "prometheus",
    "gateway",
    "world",
    "tiers",
    "slurm_cluster",
    "vm_stack",
    "backend_stack",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node_exporter(tmp_path_factory):
    """Debian's real node_exporter, the reference for host-metric compatibility; its /metrics URL."""
    with services.node_exporter(tmp_path_factory.mktemp("node-exporter")) as server:
        yield server.url


@pytest.fixture(scope="session")
def exporter_cmd():
    """The exporter's command line, as the stack runs it."""
    return [sys.executable, "-m", "exporter.cli"]


@pytest.fixture(scope="session")
def postgres():
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mailbox():
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, node_exporter, mailbox):
    """Prometheus + Alertmanager + our exporter + the gateway via `fleetwatch up`'s own code.

    Scrapes and evaluates every second; alert notifications go out within
    seconds, email to ``mailbox``. node_exporter is a second target of the same
    job, so a query can be run against both and compared.
    """
    config = stack_config(
        tmp_path_factory.mktemp("state"),
        exporter_args=["--process-interval=1", "--gpu-interval=1"],
        env={
            "FLEETWATCH_SMTP_SMARTHOST": f"127.0.0.1:{mailbox.port}",
            "FLEETWATCH_SMTP_REQUIRE_TLS": "false",
            "FLEETWATCH_CHANNEL_ALLOW_HOSTS": "127.0.0.1",  # the tests' webhook receivers listen on loopback
            "FLEETWATCH_ALERT_REPEAT_INTERVAL": "2s",
            "FLEETWATCH_STREAM_STATUS_POLL_S": "1",  # live updates (tests/test_stream.py)
            "FLEETWATCH_STREAM_POLL_S": "0.2",
        },
    )
    s = Stack(config)
    reference = [
        {
            "targets": [node_exporter.removeprefix("http://").removesuffix("/metrics")],
            "labels": {"host_id": "node-exporter-reference"},
        }
    ]
    (config.state_dir / "file_sd" / "reference.json").write_text(json.dumps(reference))
    with s:
        yield s
    assert s.exited() is None or all(sv.process.returncode in (0, -15) for sv in s.services)


@pytest.fixture(scope="session")
def prom(stack) -> PromClient:
    return PromClient(stack.urls()["prometheus"])


@pytest.fixture(scope="module")
def app(stack, tmp_path_factory):
    """The gateway in-process, on the stack's Prometheus.

    Its state dir is its own, not the stack's: the hosts tests make (the
    spec's 10.0.2.10, *.example.com) must never become targets Prometheus
    tries to scrape. Tests hand Prometheus the loopback ones themselves.
    """
    app = make_app(
        tmp_path_factory.mktemp("gateway-app"),
        stack.urls()["prometheus"],
        RATE_LIMIT_READS_PER_MIN=100_000,
        RATE_LIMIT_WRITES_PER_MIN=100_000,
        LOGIN_ATTEMPTS_PER_MIN=100_000,
    )
    client = app.test_client()
    admin = login(client, ADMIN)
    r = client.post(
        "/api/v1/users",
        json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"},
        headers=bearer(admin["access_token"]),
    )
    assert r.status_code in (201, 409), r.get_json()
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm (fleetwatch/testing/slurm.py) for the session; skipped, saying why, where it cannot run."""
    from fleetwatch.testing.slurm import SlurmCluster, why_not

    reason = why_not()
    if reason:
        pytest.skip(f"no Slurm here: {reason}")
    cluster = SlurmCluster().start()  # where it can run, failing to start is a failure, not a skip
    yield cluster
    cluster.stop()
