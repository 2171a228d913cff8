"""`fleetwatch up --gateways N`: N gateway processes behind HAProxy, on one PostgreSQL in the state directory.

HAProxy takes the gateway's usual port and spreads requests over the
replicas, each checked on /health; the replicas listen on the ports after it
(docs/replicas.md). Everything they must agree on lives in PostgreSQL (users,
sessions, rules, rate counters, report leases, the deploy lock) or in
Prometheus; the rule files and file_sd targets are written into the one state
directory they share, under the DB's deploy lock.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fleetwatch import postgres
from fleetwatch.stack import Service, ServiceFailed, find_binary

DATABASE = "fleetwatch"
REPLICA_PORT_OFFSET = 100  # PostgreSQL at the gateway's port + 100, replica i at + 100 + i
# Only HAProxy listens where the stack was asked to (--listen-host): PostgreSQL trusts every
# local connection, and a replica trusts the client address HAProxy forwards to it.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Layout:
    """Where the parts listen: HAProxy on ``host`` at the gateway port, PostgreSQL and the replicas above it."""

    host: str
    gateway_port: int
    count: int

    @property
    def postgres_port(self) -> int:
        return self.gateway_port + REPLICA_PORT_OFFSET

    def replica_ports(self) -> list[int]:
        return [self.postgres_port + i for i in range(1, self.count + 1)]

    def database_url(self) -> str:
        return postgres.url(LOOPBACK, self.postgres_port, DATABASE)


def haproxy_config(listen: str, replicas: list[str], health_path: str = "/health") -> str:
    """HAProxy's config: HTTP on ``listen`` to ``replicas`` (host:port) in turn, each checked on ``health_path``."""
    servers = "\n".join(
        f"    server gateway-{i} {address} check inter 1s fall 2 rise 1" for i, address in enumerate(replicas, 1)
    )
    return f"""\
# Written by fleetwatch up --gateways; rewritten on every start.
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # Live-update streams (SSE) stay open: idle up to an hour once a response streams.
    timeout tunnel 1h
    # A request a replica could not take (it stopped between checks) goes to another.
    retries 2
    option redispatch
    # The client's address for the replicas (login limits, audit log): they trust one hop.
    option forwardfor

frontend gateway
    bind {listen}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET {health_path}
    http-check expect status 200
{servers}
"""


def haproxy_argv(config_path: Path) -> list[str]:
    """HAProxy in the foreground (a child the stack watches), master-worker so a signal stops it cleanly."""
    return [find_binary("haproxy"), "-W", "-db", "-f", str(config_path)]


def replicated(services: list, layout: Layout, state: Path) -> list:
    """The stack's services with its one gateway replaced by PostgreSQL, ``layout.count`` replicas and HAProxy."""
    gateway = next(s for s in services if s.name == "gateway")
    logs = gateway.log_path.parent
    replicas = []
    for i, port in enumerate(layout.replica_ports(), 1):
        argv = [a if not a.startswith("--bind=") else f"--bind={LOOPBACK}:{port}" for a in gateway.argv]
        env = {
            **gateway.env,
            "DATABASE_URL": layout.database_url(),
            # Each gunicorn master clears its metrics directory as it starts: one each.
            "FLEETWATCH_METRICS_DIR": str(state / f"gateway-metrics-{i}"),
            "FLEETWATCH_PROXY_HOPS": "1",
        }
        ready = f"http://{LOOPBACK}:{port}/health"
        replicas.append(
            dataclasses.replace(
                gateway, name=f"gateway-{i}", argv=argv, ready_url=ready, log_path=logs / f"gateway-{i}.log", env=env
            )
        )
    config_path = state / "haproxy" / "haproxy.cfg"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        haproxy_config(f"{layout.host}:{layout.gateway_port}", [f"{LOOPBACK}:{p}" for p in layout.replica_ports()])
    )
    proxy = Service("haproxy", haproxy_argv(config_path), gateway.ready_url, logs / "haproxy.log")
    pg = PostgresService(
        "postgres",
        [],
        f"postgresql://{LOOPBACK}:{layout.postgres_port}",
        logs / "postgres.log",
        layout=layout,
        data=state / "postgres",
    )
    at = services.index(gateway)
    return [pg, *services[:at], *replicas, proxy, *services[at + 1 :]]


@dataclass
class PostgresService(Service):
    """Debian's PostgreSQL on ``layout``'s port, its cluster in ``data`` (made on first start), in the foreground."""

    layout: Layout | None = None
    data: Path | None = None

    def start(self) -> None:
        try:
            import psycopg  # noqa: F401  the gateways' driver, and ours to make the database
        except ImportError:
            raise ServiceFailed("postgres: the driver is missing: pip install '.[postgres]'") from None
        postgres.own_directory(self.data)
        if subprocess.run([*postgres.as_server_user(), "test", "-w", str(self.data)]).returncode != 0:
            raise ServiceFailed(
                f"postgres: the postgres user cannot write {self.data}: run fleetwatch as another user than root, "
                "or use a state directory every user can reach"
            )
        try:
            postgres.initdb(self.data / "cluster")
        except subprocess.CalledProcessError as exc:
            raise ServiceFailed(f"postgres: initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
        options = postgres.server_options(self.layout.postgres_port, self.data, LOOPBACK)
        self.argv = [
            *postgres.as_server_user(),
            str(postgres.binaries() / "postgres"),
            "-D",
            str(self.data / "cluster"),
            *options,
        ]
        super().start()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not postgres.answers(LOOPBACK, self.layout.postgres_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceFailed(f"{self.name}: not taking connections:\n{self.log_tail()}")
            time.sleep(0.1)
        postgres.create_database(LOOPBACK, self.layout.postgres_port, DATABASE)
