"""The stack as `fleetwatch up` runs it: real Prometheus scraping the real exporter."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import psutil
import pytest
import requests

from fleetwatch.stack import BATCH_NICE, Service
from fleetwatch.testing.compat import compat_file
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port

pytestmark = pytest.mark.integration

OUR_FAMILIES = [
    "node_cpu_seconds_total",
    "node_load1",
    "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes",
    "node_filesystem_size_bytes",
    "node_disk_read_bytes_total",
    "node_network_receive_bytes_total",
    "node_sockstat_TCP_inuse",
    "node_boot_time_seconds",
    "node_uname_info",
    "fleet_top_process_cpu_percent",
    "fleet_top_process_resident_memory_bytes",
    "fleet_exporter_collector_success",
    "fleet_exporter_build_info",
]


@pytest.fixture(scope="module")
def ours_instance(stack) -> str:
    return stack.urls()["exporter"].removeprefix("http://").removesuffix("/metrics")


def ours(prom: PromClient, instance: str) -> str:
    """Wait until Prometheus scrapes ``instance`` (the exporter `fleetwatch up` started) and return it."""
    prom.wait_for(f'up{{instance="{instance}"}} == 1')
    return instance


def reference(prom: PromClient) -> str:
    return prom.wait_for('up{host_id="node-exporter-reference"} == 1')[0]["metric"]["instance"]


def test_prometheus_scrapes_the_exporter(prom, ours_instance):
    instance = ours(prom, ours_instance)  # waits for up == 1
    (scraped,) = prom.query(f'scrape_samples_scraped{{instance="{instance}"}}')
    assert float(scraped["value"][1]) > 100  # a whole host's families, not an empty page


@pytest.mark.parametrize("family", OUR_FAMILIES)
def test_family_arrives_in_prometheus(prom, ours_instance, family):
    instance = ours(prom, ours_instance)
    series = prom.wait_for(f'{family}{{instance="{instance}"}}')
    assert all(s["metric"]["host_id"] for s in series)


def test_collectors_all_succeed(prom, ours_instance):
    instance = ours(prom, ours_instance)
    result = prom.wait_for(f'fleet_exporter_collector_success{{instance="{instance}"}}')
    states = {s["metric"]["collector"]: s["value"][1] for s in result}
    # No GPU here: the GPU and XID collectors still succeed, with no DCGM series. Where slurmd has made its
    # cgroups (the Slurm tests' cluster), per-job accounting is on by itself and succeeds too.
    assert states.pop("jobs", "1") == "1"
    ours_only = {name: states.pop(name) for name in ("host", "gpu", "xid", "processes")}
    assert ours_only == {"host": "1", "gpu": "1", "xid": "1", "processes": "1"}
    # The others are node_exporter's, by name: each fares as node_exporter's own does on this machine
    # (conntrack is 0 for both where the nf_conntrack module is not loaded).
    node = {"stat", "vmstat", "filefd", "entropy", "timex", "diskstats", "netdev", "netclass", "netstat"}
    node |= {"udp_queues", "softnet", "arp", "conntrack", "os", "selinux", "time", "textfile"}
    assert set(states) == node
    ref = prom.wait_for('node_scrape_collector_success{host_id="node-exporter-reference"}')
    assert states == {s["metric"]["collector"]: s["value"][1] for s in ref if s["metric"]["collector"] in node}


def dashboard_queries(path, rows: int | None = None) -> list[tuple[str, str]]:
    """(panel title, expr) of a Grafana dashboard, from its first ``rows`` rows (collapsed rows hold their panels)."""
    dashboard = json.loads(path.read_text())
    out, row = [], 0
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            row += 1
            if rows is not None and row > rows:
                break
        for p in [panel, *panel.get("panels", [])]:
            out.extend((p.get("title", ""), t["expr"]) for t in p.get("targets", []) if t.get("expr"))
    return out


def fill(expr: str, instance: str) -> str:
    variables = {
        "$node": instance,
        "$job": "fleetwatch",
        "$instance": instance,
        "$gpu": ".*",
        "$__rate_interval": "5s",
        "$__interval": "1s",
        "$__range": "1m",
    }
    return re.sub(r"\$\w+", lambda m: variables.get(m.group(0), m.group(0)), expr)


NODE_FULL_TOP_ROWS = dashboard_queries(compat_file("node-exporter-full.json"), rows=2)


@pytest.mark.parametrize("title,expr", NODE_FULL_TOP_ROWS, ids=[t for t, _ in NODE_FULL_TOP_ROWS])
def test_node_exporter_full_top_rows_light_up(prom, ours_instance, title, expr):
    """Each panel query of the first two rows returns data on ours wherever it does on node_exporter."""
    ours_instance, ref_instance = ours(prom, ours_instance), reference(prom)
    # Wait until rate() over $__rate_interval has points on the reference.
    prom.wait_for(f'rate(node_cpu_seconds_total{{instance="{ref_instance}"}}[5s])')
    ref_result = prom.query(fill(expr, ref_instance))
    if not ref_result:
        assert not prom.query(fill(expr, ours_instance)), f"{title}: only ours has data"
        return
    ours_result = prom.wait_for(fill(expr, ours_instance), timeout_s=10)
    assert len(ours_result) == len(ref_result), f"{title}: {len(ours_result)} series vs {len(ref_result)}"


NODE_FULL = dashboard_queries(compat_file("node-exporter-full.json"))
# Queries whose series count may differ though both have data, and why.
NODE_FULL_OTHER_COUNT = {
    # node_exporter lists its 46 collectors, ours our own (host, gpu, processes, vmstat, netstat, ...).
    'node_scrape_collector_duration_seconds{instance="$node",job="$job"}',
    'node_scrape_collector_success{instance="$node",job="$job"}',
}


def test_node_exporter_full_whole_dashboard_lights_up(prom, ours_instance):
    """Every panel query of the whole dashboard that has data on node_exporter has data on ours, as many series."""
    ours_instance, ref_instance = ours(prom, ours_instance), reference(prom)
    prom.wait_for(f'rate(node_cpu_seconds_total{{instance="{ref_instance}"}}[5s])')
    prom.wait_for(f'rate(node_cpu_seconds_total{{instance="{ours_instance}"}}[5s])')
    with_data, missing, counts = 0, [], []
    for title, expr in NODE_FULL:
        ref_result = prom.query(fill(expr, ref_instance))
        if not ref_result:
            continue
        with_data += 1
        ours_result = prom.query(fill(expr, ours_instance))
        if not ours_result:
            missing.append(f"{title}: {expr}")
        elif len(ours_result) != len(ref_result) and expr not in NODE_FULL_OTHER_COUNT:
            counts.append(f"{title}: {len(ours_result)} series vs {len(ref_result)}: {expr}")
    assert len(NODE_FULL) == 286 and with_data > 200, (len(NODE_FULL), with_data)
    assert not missing, f"{len(missing)} of {with_data} queries have no data on ours: {missing}"
    assert not counts, counts


def test_alertmanager_is_ready(stack):
    assert requests.get(stack.urls()["alertmanager"] + "/-/ready", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def gpu_host(stack, prom):
    """An exporter on a "GPU node": our real collector and HTTP path, NVML faked (CI has no GPU)."""
    from prometheus_client import start_http_server

    from exporter.gpu import GpuCollector
    from exporter.nvml import Nvml
    from exporter.registry import ExporterConfig, build_registry
    from tests.fake_nvml import UUID1, FakePynvml, h100

    gpu = GpuCollector(Nvml(FakePynvml([h100(), h100(uuid=UUID1, pci="00000000:00:07.0")])), hostname="gpu-node")
    registry, _ = build_registry(ExporterConfig(host=False, gpu=False, processes=False, extra_collectors={"gpu": gpu}))
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    gpu.start()
    target = [{"targets": [f"127.0.0.1:{port}"], "labels": {"host_id": "gpu-node"}}]
    (stack.config.state_dir / "file_sd" / "gpu-node.json").write_text(json.dumps(target))
    instance = prom.wait_for('up{host_id="gpu-node"} == 1')[0]["metric"]["instance"]
    yield instance
    gpu.stop()
    server.shutdown()


DCGM_DASHBOARD = dashboard_queries(compat_file("dcgm-exporter-dashboard.json"))


@pytest.mark.parametrize("title,expr", DCGM_DASHBOARD, ids=[t for t, _ in DCGM_DASHBOARD])
def test_dcgm_dashboard_lights_up_on_a_gpu_node(prom, gpu_host, title, expr):
    """Every panel of NVIDIA's dcgm-exporter dashboard has data for our two (fake-NVML) H100s."""
    result = prom.wait_for(fill(expr, gpu_host), timeout_s=15)
    if "sum(" not in expr and "avg(" not in expr:
        assert {s["metric"]["gpu"] for s in result} == {"0", "1"}, title
        assert {s["metric"]["Hostname"] for s in result} == {"gpu-node"}, title


def test_gateway_runs_in_the_stack_and_is_scraped(stack, prom):
    url = stack.urls()["gateway"]
    assert requests.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{url}/ready", timeout=5).json()["prometheus"] == "ok"
    prom.wait_for('up{job="fleetwatch-gateway"} == 1')  # 0 if the scrape token were refused
    # Prometheus scrapes it with the stack's scrape token; nobody else reads the fleet's hosts there
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 401


def test_the_raw_tier_prometheus_runs_with_the_stacks_gogc(stack):
    info = requests.get(stack.urls()["prometheus"] + "/api/v1/status/runtimeinfo", timeout=5).json()["data"]
    assert info["GOGC"] == "200"


@pytest.mark.parametrize("batch", ["downsampler", "longterm"])
def test_the_batch_tiers_yield_the_cpu_to_the_raw_tier(stack, batch):
    service = next(s for s in stack.services if s.name == batch)
    raw = next(s for s in stack.services if s.name == "prometheus")
    assert psutil.Process(service.process.pid).nice() == psutil.Process(raw.process.pid).nice() + BATCH_NICE
    autogroup = Path(f"/proc/{service.process.pid}/autogroup")
    if autogroup.exists():  # a kernel built with autogroups: its session's share is lowered too
        assert autogroup.read_text().split()[-1] == str(BATCH_NICE)


def test_a_niced_service_yields_a_shared_core_to_the_others(tmp_path):
    # Every service starts a session of its own; where the kernel groups CPU shares by session
    # (autogroup), a nice that only the process carries changes nothing between services.
    cpu = min(os.sched_getaffinity(0))
    spin = (
        f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
        "end = time.monotonic() + 3\nwhile time.monotonic() < end: pass"
    )
    services = [
        Service(name, [sys.executable, "-c", spin], "", tmp_path / f"{name}.log", nice=nice)
        for name, nice in (("raw", 0), ("batch", BATCH_NICE))
    ]
    for service in services:
        service.start()
    cpu_seconds = {}
    for service in services:
        _, _, usage = os.wait4(service.process.pid, 0)
        cpu_seconds[service.name] = usage.ru_utime + usage.ru_stime
    # Nice 10 weighs 110 against nice 0's 1024: about a tenth of the core; equal shares without it.
    assert cpu_seconds["batch"] < cpu_seconds["raw"] / 3, cpu_seconds


def test_prometheus_gogc_is_a_flag_of_up_within_bounds(tmp_path, capsys):
    from fleetwatch.cli import build_parser, stack_config
    from fleetwatch.stack import build_services, render_configs

    config = stack_config(build_parser().parse_args(["up", f"--state-dir={tmp_path}", "--prometheus-gogc=100"]))
    services = {s.name: s for s in build_services(config, render_configs(config))}
    assert services["prometheus"].env["GOGC"] == "100"
    assert "GOGC" not in services["longterm"].env and "GOGC" not in services["downsampler"].env
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--prometheus-gogc=off"])
    assert "expected a GOGC of 50 to 1000" in capsys.readouterr().err


def test_prometheus_memory_limit_gives_the_raw_tier_a_fixed_heap_goal(tmp_path, capsys):
    from fleetwatch.cli import build_parser, stack_config
    from fleetwatch.stack import build_services, render_configs

    args = ["up", f"--state-dir={tmp_path}", "--prometheus-memory-limit=4500"]
    config = stack_config(build_parser().parse_args(args))
    services = {s.name: s for s in build_services(config, render_configs(config))}
    assert services["prometheus"].env == {"GOGC": "off", "GOMEMLIMIT": "4500MiB"}
    assert "GOMEMLIMIT" not in services["longterm"].env and "GOMEMLIMIT" not in services["downsampler"].env
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--prometheus-memory-limit=4G"])
    assert "expected MiB from 512 to 1048576" in capsys.readouterr().err
