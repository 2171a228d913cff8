"""The real services a test or bench starts on its own: Prometheus, Alertmanager, node_exporter, exporter, gateway.

Each is a ``Server``: the stack's own ``Service`` (a child process with its log,
started in its own session, SIGTERM should the parent die) plus the URL it
answers on. Its port is fixed when it is made, so ``stop()`` then ``up()`` is
the same server again, with the same data.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from fleetwatch.stack import Service, find_binary
from fleetwatch.testing.api import ADMIN
from fleetwatch.testing.waits import free_port

# Remote write in, scrape nothing; samples up to an hour late still go in (agents send their backlog).
PROMETHEUS_CONFIG = """\
global: {scrape_interval: 1m}
storage:
  tsdb:
    out_of_order_time_window: 1h
"""


@dataclass
class Server(Service):
    """A service and the base URL it answers on; a context manager that starts and stops it."""

    url: str = ""

    def up(self, timeout_s: float = 60.0) -> Server:
        """Start it and wait until it answers."""
        self.start()
        self.wait_ready(timeout_s)
        return self

    def __enter__(self) -> Server:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.stop()


def prometheus(tsdb: Path, config: str = PROMETHEUS_CONFIG, flags: tuple[str, ...] = (), port: int = 0) -> Server:
    """Debian's Prometheus taking remote write, its TSDB in ``tsdb``, its config and log beside it."""
    url = f"http://127.0.0.1:{port or free_port()}"
    config_file = tsdb.with_name(f"{tsdb.name}.yml")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config)
    argv = [
        find_binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tsdb}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--web.enable-remote-write-receiver",
        "--log.level=warn",
        *flags,
    ]
    return Server("prometheus", argv, f"{url}/-/ready", tsdb.with_name(f"{tsdb.name}.log"), url=url)


def victoriametrics(data: Path, port: int = 0) -> Server:
    """Debian's VictoriaMetrics single node taking remote write, its data in ``data``, its log beside it.

    New samples are visible at once (no 30 s latency offset) and a series ends 5 min after
    its last sample, as in Prometheus (../shared/facts/victoriametrics.md).
    """
    url = f"http://127.0.0.1:{port or free_port()}"
    argv = [
        find_binary("victoria-metrics"),
        f"-httpListenAddr={url.removeprefix('http://')}",
        f"-storageDataPath={data}",
        "-retentionPeriod=7d",
        "-search.latencyOffset=0s",
        "-search.minStalenessInterval=5m",
        "-loggerLevel=WARN",
    ]
    return Server("victoriametrics", argv, f"{url}/health", data.with_name(f"{data.name}.log"), url=url)


def alertmanager(directory: Path, config: str) -> Server:
    """Debian's Alertmanager with ``config``, its state and log in ``directory``; no cluster port."""
    url = f"http://127.0.0.1:{free_port()}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(config)
    argv = [
        find_binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",
    ]
    return Server("alertmanager", argv, f"{url}/-/ready", directory / "alertmanager.log", url=url)


def node_exporter(log_dir: Path) -> Server:
    """Debian's node_exporter, the reference for host-metric compatibility; ``url`` is its /metrics."""
    address = f"127.0.0.1:{free_port()}"
    argv = [find_binary("prometheus-node-exporter"), f"--web.listen-address={address}"]
    url = f"http://{address}/metrics"
    return Server("node_exporter", argv, url, log_dir / "node_exporter.log", url=url)


def exporter(log_dir: Path, *args: str) -> Server:
    """Our exporter (``python -m exporter.cli``) with ``args``, listening on a free port; ``url`` is its /metrics."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "exporter.cli", f"--listen={address}", *args]
    url = f"http://{address}/metrics"
    return Server("exporter", argv, url, log_dir / f"exporter-{address.rsplit(':')[-1]}.log", url=url)


def gateway(
    state: Path,
    prometheus_url: str,
    args: tuple[str, ...] = ("--workers=1",),
    env: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Server:
    """``fleetwatch-gateway serve`` (gunicorn) on ``state`` with ADMIN as its admin; HTTPS with ``tls`` (cert, key)."""
    address = f"127.0.0.1:{free_port()}"
    url = f"{'https' if tls else 'http'}://{address}"
    settings = {
        "FLEETWATCH_STATE_DIR": str(state),
        "FLEETWATCH_PROMETHEUS_URL": prometheus_url,
        "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
        "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
        "FLEETWATCH_BCRYPT_ROUNDS": "4",  # bcrypt's minimum: logins are not what is tested or measured
        "FLEETWATCH_LOG_LEVEL": "WARNING",  # a line per request would weigh on the benches' figures
        **({"FLEETWATCH_CERTFILE": str(tls[0]), "FLEETWATCH_KEYFILE": str(tls[1])} if tls else {}),
        **(env or {}),
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", f"--bind={address}", *args]
    server = Server("gateway", argv, f"{url}/health", state / "gateway.log", env=settings, url=url)
    server.verify = str(tls[0]) if tls else True
    return server
