"""Fixtures that run the real parts: Prometheus, Alertmanager, node_exporter and our exporter on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fleetwatch.stack import Ports, Stack, StackConfig, free_port, wait_http  # noqa: F401 - used by tests
from gateway.app import create_app

SHARED = Path(__file__).resolve().parents[2] / "shared"
ADMIN = ("admin@example.com", "admin-password-123")
VIEWER = ("viewer@example.com", "viewer-password-123")


class PromClient:
    """Just enough of the Prometheus HTTP API for assertions."""

    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict]:
        """Poll until ``promql`` returns something; fail with the query if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"no data for {promql} within {timeout_s} s")


@pytest.fixture(scope="session")
def node_exporter():
    """Debian's real node_exporter, the reference for host-metric compatibility."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, proc)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def exporter_cmd():
    """The exporter's command line, as the stack runs it."""
    return [sys.executable, "-m", "exporter.cli"]


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it is sent."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        from email import message_from_bytes

        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def start(self):
        self._controller.start()
        return self

    def stop(self):
        self._controller.stop()


class Postgres:
    """A throwaway PostgreSQL server (Debian's) on a loopback port, its data in a temp dir."""

    def __init__(self):
        import glob
        import os
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert found, "PostgreSQL is not installed: `make test` installs Debian's postgresql package"
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="fleetwatch-pg-"))
        # PostgreSQL refuses to run as root: as root, run it as the package's postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True)

    def start(self):
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.dir / "data"),
            "-A",
            "trust",
            "-U",
            "fleetwatch",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self):
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database's SQLAlchemy URL."""
        import uuid

        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=fleetwatch dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://fleetwatch@127.0.0.1:{self.port}/{name}"


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
    ports = Ports(*(free_port() for _ in range(5)))
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("state"),
        ports=ports,
        scrape_interval="1s",
        evaluation_interval="1s",
        exporter_args=["--process-interval=1", "--gpu-interval=1"],
        gateway_env={
            "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
            "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
            "FLEETWATCH_BCRYPT_ROUNDS": "4",
            "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000",
            "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000",
            "FLEETWATCH_SMTP_SMARTHOST": f"127.0.0.1:{mailbox.port}",
            "FLEETWATCH_SMTP_REQUIRE_TLS": "false",
            "FLEETWATCH_ALERT_GROUP_WAIT": "1s",
            "FLEETWATCH_ALERT_GROUP_INTERVAL": "1s",
            "FLEETWATCH_ALERT_REPEAT_INTERVAL": "2s",
            "FLEETWATCH_ALERT_EVENTS_GROUP_INTERVAL": "1s",
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


# The gateway: the real app on the real stack's Prometheus and state directory.


def make_app(state_dir, prometheus_url: str, **overrides):
    config = {
        "TESTING": True,
        "STATE_DIR": str(state_dir),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{state_dir}/gateway-{overrides.pop('db_name', 'test')}.db",
        "PROMETHEUS_URL": prometheus_url,
        # Nothing listens there: an in-process app never reloads a real Alertmanager.
        "ALERTMANAGER_URL": f"http://127.0.0.1:{free_port()}",
        "BCRYPT_ROUNDS": 4,  # bcrypt's minimum: tests log in hundreds of times
        "ADMIN_EMAIL": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "LOG_JSON": False,
        "QUERY_CACHE_TTL_S": 0.0,
        **overrides,
    }
    return create_app(config)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl: (cert.pem, key.pem) in ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def targets_once(state_dir, check, timeout_s: float = 5.0) -> list[dict]:
    """The gateway's file_sd targets once ``check(targets)`` holds (a burst of changes is written once, later)."""
    path = Path(state_dir) / "file_sd" / "hosts.json"
    deadline = time.monotonic() + timeout_s
    while True:
        targets = json.loads(path.read_text()) if path.exists() else []
        if check(targets) or time.monotonic() > deadline:
            return targets
        time.sleep(0.05)


def login(client, creds) -> dict:
    r = client.post("/api/v1/auth/login", json={"email": creds[0], "password": creds[1]})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


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
