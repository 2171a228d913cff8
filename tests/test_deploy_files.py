"""The Docker deployment and Grafana files: valid for the tools that read them, queries valid PromQL.

No Docker engine and no Grafana server are needed: docker-compose 1.29 validates
the compose file offline (when installed), promtool and amtool check the
configs, and every dashboard query runs against the real Prometheus of the
``prom`` fixture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
import requests
import yaml

from fleetwatch.testing.api import api_session

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# The dashboards of hosts, by host_id with the tag variables (jobs.json is by job: tests/test_jobs_slurm.py).
FLEET_DASHBOARDS = [p for p in DASHBOARDS if p.name in {"fleet.json", "hosts.json", "gpus.json", "alerts.json"}]

# Published on the host: only what has authentication of its own (or serves nothing secret).
SERVICE_PORTS = {"gateway": 8080, "grafana": 3000, "exporter": 9101}
INTERNAL = ("prometheus", "prometheus-downsampler", "prometheus-longterm", "alertmanager")
COMPOSE_ENV = {"GF_SECURITY_ADMIN_PASSWORD": "test-only", "FLEETWATCH_ADMIN_PASSWORD": "test-only"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_names_the_services_and_ports():
    doc = compose()
    assert str(doc["version"]).startswith("3")
    services = doc["services"]
    assert set(SERVICE_PORTS) <= set(services)
    for name, port in SERVICE_PORTS.items():
        published = {str(p).removeprefix("127.0.0.1:") for p in services[name]["ports"]}
        assert f"{port}:{port}" in published, f"{name}: {published}"
    for name in INTERNAL:  # on the compose network only
        assert "ports" not in services[name] and services[name]["expose"], name


def test_compose_runs_the_gateway_whose_files_prometheus_and_alertmanager_read():
    services = compose()["services"]
    gateway = services["gateway"]
    dockerfile = ROOT / gateway["build"]["context"] / gateway["build"]["dockerfile"]
    assert dockerfile.is_file() and dockerfile.parent == DOCKER
    text = dockerfile.read_text()
    assert "fleetwatch-gateway" in text and "/bin/promtool" in text and "/bin/amtool" in text
    assert re.search(r"^USER 65534", text, re.M), "the same user as Prometheus' and Alertmanager's images"
    env = gateway["environment"]
    assert env["FLEETWATCH_ADMIN_PASSWORD"].startswith("${FLEETWATCH_ADMIN_PASSWORD:?")
    assert env["FLEETWATCH_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["FLEETWATCH_LONGTERM_URL"] == "http://prometheus-longterm:9090"
    assert env["FLEETWATCH_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert env["FLEETWATCH_SCRAPE_INTERVAL"] == scrape
    assert "gateway-state:/var/lib/fleetwatch" in gateway["volumes"]
    assert "gateway-state:/etc/prometheus/fleetwatch:ro" in services["prometheus"]["volumes"]
    assert "gateway-state:/etc/alertmanager/fleetwatch:ro" in services["alertmanager"]["volumes"]
    # Where the gateway writes them (gateway/app.py: STATE_DIR/rules, /alertmanager, /file_sd).
    assert "/etc/alertmanager/fleetwatch/alertmanager/alertmanager.yml" in services["alertmanager"]["command"][0]
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert "/etc/prometheus/fleetwatch/rules/*.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fleetwatch"]["file_sd_configs"][0]["files"] == ["/etc/prometheus/fleetwatch/file_sd/*.json"]
    assert jobs["fleetwatch-gateway"]["static_configs"][0]["targets"] == ["gateway:8080"]


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
    assert services["alertmanager"]["command"][0].endswith(" --cluster.listen-address=")  # one instance: no gossip
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
    assert binary, "Debian's docker-compose is missing: scripts/system-deps.sh installs it"
    env = {**os.environ, **COMPOSE_ENV}
    ok = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # ... and refuses it without either admin password.
    for name in COMPOSE_ENV:
        without = {k: v for k, v in env.items() if k != name}
        refused = subprocess.run(
            [binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=without, capture_output=True
        )
        assert refused.returncode != 0, name


# --- Prometheus and Alertmanager configs ------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path):
    # promtool stats the scrape token's file, which the gateway makes in its volume on first start
    # (Prometheus itself reads it at each scrape): the check runs on a copy pointing at a stand-in.
    token = tmp_path / "metrics-token"
    token.write_text("stand-in\n")
    config = (DOCKER / "prometheus.yml").read_text()
    assert "/etc/prometheus/fleetwatch/secrets/metrics-token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/fleetwatch/secrets/metrics-token", str(token))
    )
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_compose_services():
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert config["storage"]["tsdb"]["out_of_order_time_window"] == "1h"
    assert config["rule_files"][0] == "/etc/prometheus/rules/*.yml"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert jobs["fleetwatch"][0]["targets"] == ["exporter:9101"]
    assert jobs["fleetwatch"][0]["labels"]["host_id"]
    assert {"prometheus", "alertmanager"} <= set(jobs)


def test_compose_downsamples_in_a_prometheus_of_its_own_as_the_stack_does(tmp_path):
    """Raw → downsampler (the layer only) → long-term (the levels only), the same filters `fleetwatch up` renders."""
    from fleetwatch.stack import StackConfig, render_configs

    rendered = render_configs(StackConfig(state_dir=tmp_path))
    raw, stack_raw = (yaml.safe_load(p.read_text()) for p in (DOCKER / "prometheus.yml", rendered["prometheus"]))
    ds, stack_ds = (yaml.safe_load(p.read_text()) for p in (DOCKER / "downsampler.yml", rendered["downsampler"]))
    assert raw["remote_write"][0]["url"] == "http://prometheus-downsampler:9090/api/v1/write"
    assert ds["remote_write"][0]["url"] == "http://prometheus-longterm:9090/api/v1/write"
    for mine, stacks in ((raw, stack_raw), (ds, stack_ds)):
        assert mine["remote_write"][0]["write_relabel_configs"] == stacks["remote_write"][0]["write_relabel_configs"]
    assert "fleet-downsampling" not in " ".join(p.name for p in (DOCKER / "rules").iterdir())
    service = compose()["services"]["prometheus-downsampler"]
    assert "./deploy/docker/downsampling.yml:/etc/prometheus/downsampling.yml:ro" in service["volumes"]
    assert ds["rule_files"] == ["/etc/prometheus/downsampling.yml"]
    # promtool reads the rule file where the container mounts it: checked on a copy pointing at the repo's.
    copy = tmp_path / "downsampler.yml"
    copy.write_text(
        (DOCKER / "downsampler.yml").read_text().replace(ds["rule_files"][0], str(DOCKER / "downsampling.yml"))
    )
    result = subprocess.run(["promtool", "check", "config", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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


def test_the_dashboards_are_there():
    assert {p.name for p in DASHBOARDS} >= {"fleet.json", "hosts.json", "gpus.json", "alerts.json"}


def test_generated_dashboards_are_the_scripts_current_output(tmp_path):
    """fleet, hosts and alerts.json come from scripts/grafana_dashboards.py: edit that, then run it."""
    spec = importlib.util.spec_from_file_location("grafana_dashboards", ROOT / "scripts" / "grafana_dashboards.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.OUT = tmp_path
    script.main()
    for made in tmp_path.glob("*.json"):
        assert made.read_text() == (GRAFANA / "dashboards" / made.name).read_text(), made.name


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
            # Every host, however it reports: the fleet layer's host_id, never a scrape's instance.
            assert "instance=" not in t["expr"], t["expr"]
            if path in FLEET_DASHBOARDS:
                assert "$host" in t["expr"] or "ALERTS" in t["expr"], t["expr"]
            if t["datasource"]["uid"] == "prometheus-longterm":  # only what the long-term tier holds
                assert re.search(r"fleet:\w+:(avg|max|min|count)(1m|5m|1h)", t["expr"]), t["expr"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    if path in FLEET_DASHBOARDS:
        assert names[:3] == ["tag", "tag_value", "host"], "tag variables through fleet_host_info"
    for variable in dashboard["templating"]["list"]:
        assert variable["type"] == "textbox" or variable["datasource"]["uid"] in uids, variable["name"]


def test_panels_past_seven_days_read_the_long_term_tier():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel.get("timeFrom") and int(panel["timeFrom"].removesuffix("d")) > 7:
                assert panel["datasource"]["uid"] == "prometheus-longterm", panel["title"]
                assert all(t["datasource"]["uid"] == "prometheus-longterm" for t in panel["targets"])


def panel_queries(path: Path) -> list[tuple[str, str, str]]:
    """(panel title, expr, datasource uid) of every query of the dashboard."""
    dashboard = json.loads(path.read_text())
    return [
        (panel["title"], t["expr"], t["datasource"]["uid"])
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


def variable_queries(path: Path) -> list[tuple[str, str, str]]:
    """label_values(EXPR, LABEL) of each query variable, as the PromQL Grafana runs for it."""
    out = []
    for variable in json.loads(path.read_text())["templating"]["list"]:
        if variable["type"] == "textbox":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\$?\w+)\)", query)
        assert m, f"{variable['name']}: {query}"
        out.append((f"${variable['name']}", f"count by ({m.group(2)}) ({m.group(1)})", "prometheus"))
    return out


HOST = socket.gethostname()  # the host_id of the stack's own exporter
GPU_HOST = "gpu-health-row"  # the sick_gpu_node's


def fill(expr: str, host: str = ".*") -> str:
    variables = {
        "$host": host,
        "$gpu": ".*",
        "$tag": "hostname",
        "$tag_value": ".*",
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "1h",
        "$user": ".*",  # jobs.json
        "$jobid": ".*",
    }
    filled = re.sub(r"\$\w+", lambda m: variables.get(m.group(0), m.group(0)), expr)
    assert "$" not in filled, f"unfilled variable in {expr}"
    return filled


ALL_QUERIES = [(f"{p.name}: {title}", expr, uid) for p in DASHBOARDS for title, expr, uid in panel_queries(p)]
ALL_QUERIES += [(f"{p.name}: {name}", expr, uid) for p in DASHBOARDS for name, expr, uid in variable_queries(p)]


@pytest.mark.parametrize("title,expr,uid", ALL_QUERIES, ids=[t for t, _, _ in ALL_QUERIES])
def test_dashboard_query_is_valid_promql(stack, title, expr, uid):
    url = stack.urls()["longterm" if uid == "prometheus-longterm" else "prometheus"]
    body = requests.get(f"{url}/api/v1/query", params={"query": fill(expr)}, timeout=10).json()
    assert body["status"] == "success", body  # a parse error is status "error"


@pytest.fixture(scope="module")
def inventory(stack, prom, sick_gpu_node):
    """The stack's host and the GPU node in the gateway's inventory, as users add hosts: in fleet_host_info."""
    api = api_session(stack.urls()["gateway"])
    exporter = stack.urls()["exporter"].removeprefix("http://").removesuffix("/metrics")
    # The same address and host_id as the targets they have: Prometheus scrapes each once.
    # The stack registers its own host itself: that one only gets the tag.
    made, tagged = [], []
    for host_id, address in ((HOST, exporter), (GPU_HOST, sick_gpu_node)):
        body = {"id": host_id, "hostname": f"{host_id}.test", "exporter": address, "tags": {"role": "dashboards-test"}}
        created = api.post(f"{api.base}/api/v1/hosts", json=body, timeout=30)
        if created.status_code == 409:
            before = api.get(f"{api.base}/api/v1/hosts/{host_id}", timeout=30).json()["host"]["tags"]
            patched = api.patch(f"{api.base}/api/v1/hosts/{host_id}", json={"tags": body["tags"]}, timeout=30)
            assert patched.status_code == 200, patched.text
            tagged.append((host_id, before))
        else:
            assert created.status_code == 201, created.text
            made.append(host_id)
    prom.wait_for('count(fleet_host_info{role="dashboards-test"}) == 2', timeout_s=60)
    yield api
    for host_id in made:
        api.delete(f"{api.base}/api/v1/hosts/{host_id}", timeout=30)
    for host_id, tags in tagged:
        api.patch(f"{api.base}/api/v1/hosts/{host_id}", json={"tags": tags}, timeout=30)


@pytest.fixture(scope="module")
def firing_alert(inventory, prom):
    """An alert firing for the stack's host, so that the alerts dashboard has something to show."""
    api = inventory
    rule = {"name": "Dashboards test", "expression": "cpu.utilization >= 0", "duration": "1s"}
    created = api.post(f"{api.base}/api/v1/alerts/rules", json=rule, timeout=30)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    prom.wait_for(f'ALERTS{{alertname="{rule_id}",alertstate="firing",host_id="{HOST}"}}', timeout_s=60)
    yield rule_id
    api.delete(f"{api.base}/api/v1/alerts/rules/{rule_id}", timeout=30)


HOST_QUERIES = [q for q in ALL_QUERIES if q[0].split(":")[0] in {p.name for p in FLEET_DASHBOARDS}]


@pytest.mark.parametrize("title,expr,uid", HOST_QUERIES, ids=[t for t, _, _ in HOST_QUERIES])
def test_dashboard_query_has_data_for_a_scraped_and_a_gpu_host(prom, sick_gpu_node, firing_alert, title, expr, uid):
    if uid == "prometheus-longterm":
        # The hourly series reach the long-term tier an hour after a start: the same
        # selection over the raw tier's series they are made from has data now.
        expr = re.sub(r"(fleet:\w+):(avg|max|min|count)(1m|5m|1h)", r"\1", expr)
    hosts = f"{re.escape(HOST)}|{GPU_HOST}".replace("\\", "\\\\")
    result = prom.wait_for(fill(expr, hosts), timeout_s=30)
    shown = {s["metric"]["host_id"] for s in result if "host_id" in s["metric"]}
    if "$host" in expr:
        assert shown <= {HOST, GPU_HOST}, title
    else:  # $tag_value and $host list the whole inventory (other tests add hosts too)
        assert {HOST, GPU_HOST} & shown or not shown, title


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
    # A process on it: this test run (the top-processes panel needs a pid that exists).
    failed_remap = {
        "nvmlDeviceGetRemappedRows": (5, 1, 0, 1),
        "nvmlDeviceGetComputeRunningProcesses": [SimpleNamespace(pid=os.getpid(), usedGpuMemory=1 << 30)],
    }
    lib = FakePynvml([sick_gpu(**failed_remap), mig_gpu(), v100])
    node = GpuNode(stack.config.state_dir, GPU_HOST, lib, processes=True)
    node.lib.xid(0, 79)
    yield f"127.0.0.1:{node.port}"
    node.stop()


@pytest.mark.parametrize("title,ref,expr", GPU_HEALTH_QUERIES, ids=[f"{t} {r}" for t, r, _ in GPU_HEALTH_QUERIES])
def test_gpu_health_row_has_data_for_a_sick_gpu_node(prom, sick_gpu_node, title, ref, expr):
    prom.wait_for(f'up{{instance="{sick_gpu_node}"}} == 1')
    result = prom.wait_for(fill(expr, GPU_HOST), timeout_s=30)
    assert {s["metric"].get("host_id") for s in result} == {GPU_HOST}, title


# --- the rules docker-compose's Prometheus loads ----------------------------------------------


def compose_rules() -> dict[str, str]:
    """What the rules compiler renders for docker-compose's 15 s scrape interval, by path under deploy/docker."""
    from rules_compiler.catalog import CATALOG
    from rules_compiler.downsampling import render_downsampling_rules
    from rules_compiler.recording import rate_window_for, render_normalisation_rules

    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["global"]["scrape_interval"]
    return {
        "rules/fleet-normalisation.yml": render_normalisation_rules(CATALOG, scrape, rate_window_for(int(scrape[:-1]))),
        "downsampling.yml": render_downsampling_rules(CATALOG),
    }


@pytest.mark.parametrize("name", ["rules/fleet-normalisation.yml", "downsampling.yml"])
def test_compose_rules_are_the_compilers_current_output(name):
    """docker-compose has no rendering step: the compiled rules are in the repo, and must not go stale."""
    path = DOCKER / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(compose_rules()[name])
    assert path.read_text() == compose_rules()[name], "run UPDATE_GOLDEN=1 pytest tests/test_deploy_files.py"
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
