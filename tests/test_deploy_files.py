"""The Docker deployment and Grafana files: valid for the tools that read them, queries valid PromQL.

No Docker engine and no Grafana server are needed: docker-compose 1.29 validates
the compose file offline (when installed), promtool and amtool check the
configs, and every dashboard query runs against the real Prometheus of the
``prom`` fixture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pynvml
import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

SERVICE_PORTS = {"prometheus": 9090, "alertmanager": 9093, "grafana": 3000, "exporter": 9101}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_names_the_services_and_ports():
    doc = compose()
    assert str(doc["version"]).startswith("3")
    services = doc["services"]
    assert set(SERVICE_PORTS) <= set(services)
    for name, port in SERVICE_PORTS.items():
        published = {str(p) for p in services[name]["ports"]}
        assert f"{port}:{port}" in published, f"{name}: {published}"


def test_compose_pins_images_and_flags():
    services = compose()["services"]
    assert services["prometheus"]["image"] == "prom/prometheus:v2.42.0"
    prom_flags = services["prometheus"]["command"]
    assert {
        "--web.enable-lifecycle",
        "--web.enable-remote-write-receiver",
        "--storage.tsdb.retention.time=7d",
    } <= set(prom_flags)
    assert services["alertmanager"]["image"] == "prom/alertmanager:v0.25.0"
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]
    image, _, tag = services["grafana"]["image"].partition(":")
    assert image == "grafana/grafana-oss" and re.fullmatch(r"\d+\.\d+\.\d+", tag), "Grafana pinned to a release"


def test_compose_grafana_needs_a_password_and_has_no_anonymous_access():
    env = compose()["services"]["grafana"]["environment"]
    # No secret in the file: interpolation fails unless the variable is set.
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GF_SECURITY_ADMIN_PASSWORD:?")
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose()["services"]["grafana"]["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == "/var/lib/grafana/dashboards"


def test_compose_exporter_reads_the_hosts_procfs():
    exporter = compose()["services"]["exporter"]
    assert exporter["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (ROOT / exporter["build"]["context"] / exporter["build"]["dockerfile"]).is_file()
    assert exporter["pid"] == "host"
    assert "/proc:/host/proc:ro" in exporter["volumes"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install ." in dockerfile
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    assert entrypoint == ["fleetwatch-exporter", "--listen", "0.0.0.0:9101", "--proc-root", "/host/proc"]


def test_compose_mounts_only_files_that_exist():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    env = {**os.environ, "GF_SECURITY_ADMIN_PASSWORD": "test-only"}
    if binary is None:
        # Debian's docker-compose is not installed here: the YAML checks above are what remains.
        assert compose()["services"]
        return
    ok = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # ... and refuses it without the admin password.
    env.pop("GF_SECURITY_ADMIN_PASSWORD")
    refused = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env, capture_output=True)
    assert refused.returncode != 0


# --- Prometheus and Alertmanager configs ------------------------------------------------------


def test_prometheus_config_passes_promtool():
    result = subprocess.run(
        ["promtool", "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_compose_services():
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert config["storage"]["tsdb"]["out_of_order_time_window"] == "1h"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert jobs["fleetwatch"][0]["targets"] == ["exporter:9101"]
    assert jobs["fleetwatch"][0]["labels"]["host_id"]
    assert {"prometheus", "alertmanager"} <= set(jobs)


def test_alertmanager_config_passes_amtool():
    result = subprocess.run(
        ["amtool", "check-config", str(DOCKER / "alertmanager.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana provisioning and dashboards ------------------------------------------------------


def provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        uids |= {ds["uid"] for ds in yaml.safe_load(path.read_text())["datasources"]}
    return uids


def test_datasource_is_the_compose_prometheus_and_default():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "fleetwatch.yml").read_text())
    (ds,) = doc["datasources"]
    assert (ds["name"], ds["type"], ds["uid"], ds["url"]) == (
        "Prometheus",
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    assert ds["isDefault"] is True


def test_dashboard_provider_reads_the_mounted_folder():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "fleetwatch.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_both_dashboards_are_there():
    assert {p.name for p in DASHBOARDS} >= {"hosts.json", "gpus.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_structure(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    uids = provisioned_datasource_uids()
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
        if panel["type"] == "row":  # a heading over the panels below it: it queries nothing
            assert not panel.get("targets") and panel["collapsed"] is False, panel["title"]
            continue
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for t in panel["targets"]:
            assert t["expr"], panel["title"]
            assert t["datasource"]["type"] == "prometheus" and t["datasource"]["uid"] in uids, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids, variable["name"]


def panel_queries(path: Path) -> list[tuple[str, str]]:
    dashboard = json.loads(path.read_text())
    return [(panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel.get("targets", [])]


def variable_queries(path: Path) -> list[tuple[str, str]]:
    """label_values(EXPR, LABEL) of each template variable, as the PromQL Grafana runs for it."""
    out = []
    for variable in json.loads(path.read_text())["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, f"{variable['name']}: {query}"
        out.append((f"${variable['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def fill(expr: str, instance: str = ".*") -> str:
    variables = {"$instance": instance, "$gpu": ".*", "$__rate_interval": "1m", "$__interval": "15s"}
    variables |= {"$user": ".*", "$jobid": ".*"}  # jobs.json
    filled = re.sub(r"\$\w+", lambda m: variables.get(m.group(0), m.group(0)), expr)
    assert "$" not in filled, f"unfilled variable in {expr}"
    return filled


ALL_QUERIES = [
    (f"{p.name}: {title}", expr) for p in DASHBOARDS for title, expr in panel_queries(p) + variable_queries(p)
]


@pytest.mark.parametrize("title,expr", ALL_QUERIES, ids=[t for t, _ in ALL_QUERIES])
def test_dashboard_query_is_valid_promql(prom, title, expr):
    body = requests.get(f"{prom.url}/api/v1/query", params={"query": fill(expr)}, timeout=10).json()
    assert body["status"] == "success", body  # a parse error is status "error"


HOST_QUERIES = panel_queries(GRAFANA / "dashboards" / "hosts.json")


@pytest.mark.parametrize("title,expr", HOST_QUERIES, ids=[t for t, _ in HOST_QUERIES])
def test_hosts_dashboard_has_data_for_our_exporter(stack, prom, title, expr):
    # The exporter `fleetwatch up` started: other tests add targets (a GPU-only fake among them) to the job.
    instance = stack.urls()["exporter"].removeprefix("http://").removesuffix("/metrics")
    prom.wait_for(f'up{{instance="{instance}"}} == 1')
    # rate() over 1m needs two scrapes (1 s apart in the test stack).
    result = prom.wait_for(fill(expr, re.escape(instance).replace("\\", "\\\\")), timeout_s=30)
    assert {s["metric"].get("instance") for s in result} == {instance}, title


def row_queries(path: Path, row: str) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query in the panels under the row titled ``row``."""
    panels = json.loads(path.read_text())["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == row) + 1
    under = panels[start : next((i for i in range(start, len(panels)) if panels[i]["type"] == "row"), len(panels))]
    return [(p["title"], t["refId"], t["expr"]) for p in under for t in p["targets"]]


GPU_HEALTH_QUERIES = row_queries(GRAFANA / "dashboards" / "gpus.json", "GPU health")


@pytest.fixture(scope="module")
def sick_gpu_node(stack):
    """A node whose GPUs show every kind of trouble the GPU health row draws, as its instance."""
    from tests.fake_nvml import FakePynvml, err, h100
    from tests.gpu_nodes import GpuNode
    from tests.test_gpu import mig_gpu
    from tests.test_gpu_health import RETIRED, sick_gpu

    v100 = h100(
        "GPU-00000000-0000-0000-0000-0000000000v1",
        "00000000:00:08.0",
        nvmlDeviceGetName="Tesla V100-SXM2-32GB",
        nvmlDeviceGetRetiredPages=lambda cause: RETIRED[cause],
        nvmlDeviceGetRetiredPagesPendingStatus=1,
        nvmlDeviceGetRemappedRows=err(pynvml.NVML_ERROR_NOT_SUPPORTED),
    )
    failed_remap = {"nvmlDeviceGetRemappedRows": (5, 1, 0, 1)}
    node = GpuNode(stack.config.state_dir, "gpu-health-row", FakePynvml([sick_gpu(**failed_remap), mig_gpu(), v100]))
    node.lib.xid(0, 79)
    yield f"127.0.0.1:{node.port}"
    node.stop()


@pytest.mark.parametrize("title,ref,expr", GPU_HEALTH_QUERIES, ids=[f"{t} {r}" for t, r, _ in GPU_HEALTH_QUERIES])
def test_gpu_health_row_has_data_for_a_sick_gpu_node(prom, sick_gpu_node, title, ref, expr):
    instance = sick_gpu_node
    prom.wait_for(f'up{{instance="{instance}"}} == 1')
    result = prom.wait_for(fill(expr, re.escape(instance).replace("\\", "\\\\")), timeout_s=30)
    assert {s["metric"].get("instance") for s in result} == {instance}, title


# --- the rules docker-compose's Prometheus loads ----------------------------------------------


def compose_rules() -> dict[str, str]:
    """What the rules compiler renders for docker-compose's 15 s scrape interval."""
    from rules_compiler.catalog import CATALOG
    from rules_compiler.downsampling import render_downsampling_rules
    from rules_compiler.recording import rate_window_for, render_normalisation_rules

    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["global"]["scrape_interval"]
    return {
        "fleet-normalisation.yml": render_normalisation_rules(CATALOG, scrape, rate_window_for(int(scrape[:-1]))),
        "fleet-downsampling.yml": render_downsampling_rules(CATALOG),
    }


@pytest.mark.parametrize("name", ["fleet-normalisation.yml", "fleet-downsampling.yml"])
def test_compose_rules_are_the_compilers_current_output(name):
    """docker-compose has no rendering step: the compiled rules are in the repo, and must not go stale."""
    path = DOCKER / "rules" / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(compose_rules()[name])
    assert path.read_text() == compose_rules()[name], "run UPDATE_GOLDEN=1 pytest tests/test_deploy_files.py"
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
