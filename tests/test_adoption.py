"""Adoption: the gateway on a Prometheus set up without fleetwatch, scraping Debian's plain node_exporter.

No fleetwatch exporter and no host_id label: the Prometheus config is written
by hand, as a site would have it, plus the rule files `fleetwatch rules
--host-id-from …` writes. The hosts, their status, metrics by friendly name
and alert rules then work through the API.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import requests

from fleetwatch.stack import find_binary
from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.waits import wait_until

SITE_CONFIG = """\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}/*.yml"]
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["{node}"]
"""


@pytest.fixture(scope="module", params=["instance", "nodename"])
def site(request, node_exporter, tmp_path_factory):
    """(API client with an admin token, the Prometheus URL, the host id the derivation should give)."""
    how = request.param
    state = tmp_path_factory.mktemp(f"adopt-{how}")
    rules = state / "rules"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetwatch.cli",
            "rules",
            f"--out={rules}",
            "--scrape-interval=1s",
            f"--host-id-from={how}",
        ],
        check=True,
        capture_output=True,
    )
    node = node_exporter.removeprefix("http://").removesuffix("/metrics")
    with (
        services.alertmanager(state / "alertmanager", "route: {receiver: none}\nreceivers: [{name: none}]\n") as am,
        # The gateway reloads it after each rule change, as it does its own.
        services.prometheus(
            state / "tsdb", SITE_CONFIG.format(rules=rules, node=node), flags=("--web.enable-lifecycle",)
        ) as prom,
    ):
        app = make_app(
            state,
            prom.url,
            HOST_ID_FROM=how,
            ALERTMANAGER_URL=am.url,
            ALERT_EVALUATION_INTERVAL_S=1,
            RATE_LIMIT_READS_PER_MIN=100_000,  # the tests poll: a slow machine's polls passed the default 60
            PROMTOOL=find_binary("promtool"),
            AMTOOL=find_binary("amtool"),
        )
        client = app.test_client()
        client.admin = bearer(login(client, ADMIN)["access_token"])
        yield client, prom.url, "127.0.0.1" if how == "instance" else socket.gethostname()


def test_the_scraped_host_is_listed_with_status_and_summary(site):
    client, _, host_id = site

    def listed():
        hosts = client.get("/api/v1/hosts", headers=client.admin).get_json()["hosts"]
        mine = [h for h in hosts if h["id"] == host_id and h["metrics_summary"].get("mem_pct") is not None]
        return mine and mine[0]["metrics_summary"].get("cpu_pct") is not None and mine[0]

    host = wait_until(listed, 30, f"{host_id} in the host list with its summary")
    assert host["source"] == "discovered" and host["exporter"].startswith("127.0.0.1:")
    assert not any("never seen" in r or "heartbeat" in r for r in host["status_reasons"]), host
    assert host["status"] in ("ok", "warn", "crit")


def test_metrics_by_friendly_name_and_host_detail(site):
    client, _, host_id = site
    query = f"/api/v1/metrics/query?host_id={host_id}&metric=mem.used_pct&range=1h"
    body = wait_until(
        lambda: (b := client.get(query, headers=client.admin).get_json()).get("datapoints") and b, 30, "mem.used_pct"
    )
    assert 0 < body["datapoints"][-1]["value"] < 100
    detail = client.get(f"/api/v1/hosts/{host_id}?range=15m", headers=client.admin).get_json()
    assert detail["host"]["source"] == "discovered"
    assert wait_until(
        lambda: client.get(f"/api/v1/hosts/{host_id}?range=15m", headers=client.admin).get_json()["metrics"][
            "cpu.utilization"
        ],
        30,
        "cpu.utilization in the host's detail",
    )
    # node_exporter has no per-process families: the top-N is empty, not an error.
    top = client.get(f"/api/v1/processes/top?host_id={host_id}&metric=cpu", headers=client.admin)
    assert top.status_code == 200 and top.get_json()["processes"] == []
    assert client.get("/api/v1/hosts/not-scraped", headers=client.admin).status_code == 404


def test_an_alert_rule_fires_on_the_adopted_host(site):
    client, prometheus, host_id = site
    rule = {"name": "Memory in use", "expression": "mem.used_pct > 0", "duration": "static"}
    r = client.post("/api/v1/alerts/rules", json=rule, headers=client.admin)
    assert r.status_code == 201, r.get_json()

    def firing():
        alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("rule_id") == r.get_json()["id"] and a["state"] == "firing"]

    alerts = wait_until(firing, 30, "the rule firing")
    assert {a["labels"]["host_id"] for a in alerts} == {host_id}
