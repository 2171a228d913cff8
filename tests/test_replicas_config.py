"""`fleetwatch up --gateways N` as configured, before anything starts: the flag, the services, HAProxy's file."""

from __future__ import annotations

import subprocess

import pytest

from fleetwatch.cli import build_parser
from fleetwatch.replicas import Layout, haproxy_config
from fleetwatch.stack import Ports, StackConfig, build_services, find_binary, render_configs


def test_the_gateways_flag_takes_1_to_16():
    parser = build_parser()
    assert parser.parse_args(["up"]).gateways == 1
    assert parser.parse_args(["up", "--gateways", "3"]).gateways == 3
    for bad in ("0", "17", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["up", "--gateways", bad])


def test_three_replicas_on_postgres_behind_haproxy_only_haproxy_on_the_listen_host(tmp_path):
    config = StackConfig(state_dir=tmp_path, ports=Ports.from_base(20000), listen_host="0.0.0.0", gateways=3)
    services = build_services(config, render_configs(config))
    names = [s.name for s in services]
    assert names[0] == "postgres" and names.index("haproxy") == names.index("gateway-3") + 1
    assert "gateway" not in names and [n for n in names if n.startswith("gateway-")] == [
        "gateway-1",
        "gateway-2",
        "gateway-3",
    ]
    replicas = [s for s in services if s.name.startswith("gateway-")]
    assert [next(a for a in s.argv if a.startswith("--bind=")) for s in replicas] == [
        "--bind=127.0.0.1:20104",
        "--bind=127.0.0.1:20105",
        "--bind=127.0.0.1:20106",
    ]
    for i, replica in enumerate(replicas, 1):
        assert replica.env["DATABASE_URL"] == "postgresql+psycopg://fleetwatch@127.0.0.1:20103/fleetwatch"
        assert replica.env["FLEETWATCH_PROXY_HOPS"] == "1"
        assert replica.env["FLEETWATCH_METRICS_DIR"].endswith(f"gateway-metrics-{i}")
    proxy_config = (tmp_path / "haproxy" / "haproxy.cfg").read_text()
    assert "bind 0.0.0.0:20003" in proxy_config and proxy_config.count("check inter") == 3


def test_one_gateway_is_the_stack_as_before(tmp_path):
    config = StackConfig(state_dir=tmp_path, ports=Ports.from_base(20000))
    names = [s.name for s in build_services(config, render_configs(config))]
    assert "gateway" in names and "haproxy" not in names and "postgres" not in names


def test_haproxy_accepts_its_config(tmp_path):
    layout = Layout("127.0.0.1", 20003, 2)
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config("127.0.0.1:20003", [f"127.0.0.1:{p}" for p in layout.replica_ports()]))
    checked = subprocess.run([find_binary("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
