"""The exporter as a monitored host gets it: its own distribution in a fresh venv, and the one-file zipapp.

Both are built from this checkout; pip takes the dependencies from its configured index (PyPI or a mirror).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from fleetwatch.stack import wait_http
from fleetwatch.testing.waits import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# What `pip install fleetwatch-exporter` may bring onto a host (and the venv's own pip).
HOST_DISTRIBUTIONS = {"fleetwatch-exporter", "prometheus-client", "psutil", "nvidia-ml-py", "pyyaml", "urllib3"}


@pytest.fixture(scope="module")
def exporter_venv(tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the exporter's wheel and its dependencies installed."""
    tmp = tmp_path_factory.mktemp("exporter-alone")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp / "wheels"), str(ROOT / "exporter")], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    wheel = next((tmp / "wheels").glob("fleetwatch_exporter-*.whl"))
    subprocess.run(
        [tmp / "venv/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], check=True
    )
    return tmp / "venv"


def test_the_exporter_installs_alone(exporter_venv, tmp_path):
    listing = subprocess.run(
        [exporter_venv / "bin/python", "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(listing.stdout)}
    assert installed - {"pip", "setuptools"} == HOST_DISTRIBUTIONS
    for module in ("flask", "sqlalchemy", "alembic", "bcrypt", "gunicorn", "gateway", "rules_compiler", "fleetwatch"):
        # From an empty folder: the checkout's packages are not on the path.
        r = subprocess.run([exporter_venv / "bin/python", "-c", f"import {module}"], cwd=tmp_path, capture_output=True)
        assert r.returncode == 1 and b"ModuleNotFoundError" in r.stderr, module


# Families of each of the exporter's collectors: host (node_exporter names) and top processes.
SCRAPED = {"node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_load1", "node_filesystem_avail_bytes"}
SCRAPED |= {"fleet_top_process_resident_memory_bytes"}


def families(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def assert_it_serves_a_host(argv: list, cwd: Path, env: dict | None = None) -> None:
    """Start the exporter on a free loopback port, scrape /metrics until every collector's families are there,
    stop it (it exits 0)."""
    port = free_port()
    proc = subprocess.Popen(
        [*argv, f"--listen=127.0.0.1:{port}", "--process-interval=1"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", proc, timeout_s=30)
        deadline = time.monotonic() + 20
        # The process ranking is sampled on a thread of its own: it may join a scrape or two later.
        while not SCRAPED <= (seen := families(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)):
            assert time.monotonic() < deadline, f"missing {SCRAPED - seen}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_the_alone_exporter_serves_metrics(exporter_venv, tmp_path):
    assert_it_serves_a_host([exporter_venv / "bin/fleetwatch-exporter"], tmp_path)


class Receiver:
    """A loopback stand-in for the gateway's ingest: keeps every POST, answers as the gateway does."""

    def __init__(self):
        self.posts: list[tuple[str, dict, dict]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.changed:
                    receiver.posts.append((self.path, dict(self.headers), body))
                    receiver.changed.notify_all()
                answer = json.dumps({"accepted": len(body.get("metrics", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for_metric(self, name: str, timeout_s: float) -> dict:
        """The first metrics POST holding a point of ``name``."""

        def found():
            return next(
                (
                    p
                    for p in self.posts
                    if p[0] == "/api/v1/ingest/metrics" and name in {m["metric"] for m in p[2]["metrics"]}
                ),
                None,
            )

        with self.changed:
            assert self.changed.wait_for(found, timeout_s), f"no {name} pushed within {timeout_s} s: {self.posts}"
            return found()


def test_the_alone_exporter_pushes(exporter_venv, tmp_path):
    receiver = Receiver()
    argv = [exporter_venv / "bin/fleetwatch-exporter", "--push", receiver.url, "--api-key", "fwk_alone"]
    argv += ["--host-id", "h-alone", "--interval", "1s", "--buffer", str(tmp_path / "buffer.db"), "--no-gpu"]
    agent = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        path, headers, body = receiver.wait_for_metric("cpu.utilization", 30)  # a rate: the second sample on
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
        receiver.http.shutdown()
    assert agent.returncode == 0, err.decode()[-2000:]
    assert headers["X-API-Key"] == "fwk_alone" and body["host_id"] == "h-alone"
    assert {"mem.used_pct", "cpu.load1", "disk.used_pct"} <= {m["metric"] for m in body["metrics"]}


def test_the_zipapp_runs_on_a_bare_python(tmp_path):
    """make exporter-zipapp's file, run by a Python with no third-party package at all (psutil included)."""
    pyz = tmp_path / "fleetwatch-exporter.pyz"
    subprocess.run([sys.executable, ROOT / "scripts/build_exporter_zipapp.py", pyz], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "bare"], check=True)
    python = [tmp_path / "bare/bin/python", "-I"]  # -I: no PYTHONPATH, no user site, not the current folder
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([*python, pyz, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "push mode" in r.stdout, r.stderr
    assert_it_serves_a_host([*python, pyz], tmp_path, env)
    # psutil's native code was copied out of the archive, into the cache it was given.
    assert list((tmp_path / "cache/fleetwatch-exporter").glob("*/psutil/__init__.py"))
    no_server = subprocess.run([*python, "-c", "import flask"], cwd=tmp_path, capture_output=True)
    assert no_server.returncode == 1
    # Installed as a command, as the systemd unit runs it: its `#!/usr/bin/env python3` finds the bare one.
    command = tmp_path / "bin/fleetwatch-exporter"
    command.parent.mkdir()
    command.write_bytes(pyz.read_bytes())
    command.chmod(0o755)
    env["PATH"] = f"{tmp_path / 'bare/bin'}:{os.environ['PATH']}"
    r = subprocess.run([command, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "fleetwatch-exporter 0.1.0", r.stderr
