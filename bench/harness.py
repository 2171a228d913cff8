"""What the bench scripts share: a Prometheus and a gateway of their own on free loopback ports, and its admin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from fleetwatch.stack import free_port, wait_http

ADMIN = ("bench@example.com", "bench-password-123")


def start_prometheus(data: Path, config: str = "global: {}\n", flags: tuple = ()):
    """Debian's Prometheus with ``config``, its TSDB in ``data`` (the config file beside it); (process, URL)."""
    url = f"http://127.0.0.1:{free_port()}"
    config_file = data.with_name(f"{data.name}.yml")
    config_file.write_text(config)
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={data}", f"--web.listen-address={url[7:]}"]
        + list(flags),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"{url}/-/ready", proc)
    return proc, url


def start_gateway(state: Path, prometheus_url: str, env: dict | None = None, args: tuple = ()):
    """``fleetwatch-gateway serve`` (gunicorn) on its own state dir, made with the bench admin; (process, URL)."""
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", f"--bind={url[7:]}", *args],
        env={
            **os.environ,
            "FLEETWATCH_STATE_DIR": str(state),
            "FLEETWATCH_PROMETHEUS_URL": prometheus_url,
            "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
            "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
            "FLEETWATCH_BCRYPT_ROUNDS": "4",  # logins are not what is measured
            "FLEETWATCH_LOG_LEVEL": "WARNING",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"{url}/health", proc)
    return proc, url


def admin_session(url: str) -> requests.Session:
    """A session logged in as the bench admin."""
    s = requests.Session()
    token = s.post(f"{url}/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    token.raise_for_status()
    s.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return s
