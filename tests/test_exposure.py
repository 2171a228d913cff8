"""What faces the network by default: the gateway and the exporter; Prometheus and Alertmanager only when asked."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetwatch.cli import build_parser, stack_config
from fleetwatch.stack import build_services, render_configs

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("prometheus", "downsampler", "longterm", "alertmanager")


def binds(tmp_path: Path, *flags: str) -> dict[str, str]:
    """Each service's listen address as `fleetwatch up FLAGS` would start it."""
    config = stack_config(build_parser().parse_args(["up", f"--state-dir={tmp_path}", *flags]))
    services = build_services(config, render_configs(config))
    out = {}
    for s in services:
        flag = next(a for a in s.argv if a.startswith(("--web.listen-address=", "--listen=", "--bind=")))
        out[s.name] = flag.split("=", 1)[1].rsplit(":", 1)[0]
    return out


def test_listen_host_exposes_the_gateway_and_exporter_not_prometheus_or_alertmanager(tmp_path):
    assert set(binds(tmp_path).values()) == {"127.0.0.1"}
    exposed = binds(tmp_path, "--listen-host=0.0.0.0")
    assert (exposed["gateway"], exposed["exporter"]) == ("0.0.0.0", "0.0.0.0")
    assert {exposed[name] for name in BACKENDS} == {"127.0.0.1"}, exposed
    asked = binds(tmp_path, "--listen-host=0.0.0.0", "--expose-backends")
    assert set(asked.values()) == {"0.0.0.0"}


def test_services_reach_each_other_on_loopback_when_bound_to_every_address(tmp_path):
    config = stack_config(build_parser().parse_args(["up", f"--state-dir={tmp_path}", "--listen-host=0.0.0.0"]))
    paths = render_configs(config)
    gateway = next(s for s in build_services(config, paths) if s.name == "gateway")
    assert gateway.env["FLEETWATCH_PROMETHEUS_URL"].startswith("http://127.0.0.1:")
    assert gateway.env["FLEETWATCH_ALERTMANAGER_URL"].startswith("http://127.0.0.1:")
    prometheus = yaml.safe_load(paths["prometheus"].read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", ()) for t in sc["targets"]]
    assert targets and all(t.startswith("127.0.0.1:") for t in targets), targets


def test_compose_publishes_prometheus_and_alertmanager_on_the_docker_hosts_loopback_only():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "prometheus-downsampler", "prometheus-longterm", "alertmanager"):
        published = [str(p) for p in services[name].get("ports", ())]
        assert all(p.startswith("127.0.0.1:") for p in published), (name, published)
    for name in ("exporter",):
        assert any(not str(p).startswith("127.0.0.1:") for p in services[name]["ports"])


def test_the_exporter_unit_says_where_it_listens():
    unit = (ROOT / "deploy" / "systemd" / "fleetwatch-exporter.service").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--listen=" in start, start
