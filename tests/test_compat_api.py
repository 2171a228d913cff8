"""Seed 000's API (/api/metrics/…, /api/alerts…) on the stack's gateway, over HTTP as a frontend calls it.

GPU data comes from our exporter with NVML faked (two H100s on "gpu-node", a
target of a file_sd file: a discovered host); alert rules go through the real
Prometheus and Alertmanager, events come back through the gateway's webhook.
"""

from __future__ import annotations

import time

import pytest
import requests

from fleetwatch.testing.api import ADMIN, VIEWER, http_login
from fleetwatch.testing.waits import wait_until
from tests.test_stack import gpu_host  # noqa: F401 - the fixture: an exporter with two fake-NVML GPUs

SNAPSHOT = {"id", "nodeId", "gpuIndex", "utilization", "memoryUsedMB", "memoryTotalMB", "temperatureC", "powerUsageW"}
SNAPSHOT |= {"timestamp"}


@pytest.fixture(scope="module")
def api(stack):
    base = stack.urls()["gateway"]
    admin = requests.Session()
    admin.headers.update(http_login(base, ADMIN))
    admin.post(f"{base}/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, timeout=10)
    admin.viewer = http_login(base, VIEWER)
    admin.base = base
    return admin


def gpu_snapshots(api, path: str, missing_ok: bool = False, **params) -> list[dict]:
    r = api.get(f"{api.base}{path}", params=params, timeout=10)
    if missing_ok and r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    # Each reading is its own recorded series: a GPU's first snapshots may lack the ones not yet recorded.
    return [s for s in r.json() if s["nodeId"] == "gpu-node" and None not in s.values()]


def test_current_and_per_node_snapshots(api, gpu_host):  # noqa: F811
    def two():
        found = gpu_snapshots(api, "/api/metrics/current")
        return len(found) == 2 and found

    now = wait_until(two, 30, "two GPU snapshots")
    assert [s["gpuIndex"] for s in now] == [0, 1] and set(now[0]) == SNAPSHOT
    assert now[0]["memoryTotalMB"] > now[0]["memoryUsedMB"] >= 0 and 0 <= now[0]["utilization"] <= 100
    assert now[0]["timestamp"].endswith("Z")
    # Another module's gpu-node may have just been replaced by this one: its readings settle within seconds,
    # and the node (scraped, not in the inventory) is known once the summary rules record it as discovered.
    per_node = wait_until(
        lambda: len(found := gpu_snapshots(api, "/api/metrics/gpu/gpu-node", missing_ok=True)) == 2 and found,
        30,
        "gpu/:nodeId",
    )
    assert [s["gpuIndex"] for s in per_node] == [0, 1]
    missing = api.get(f"{api.base}/api/metrics/gpu/no-such-node", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert requests.get(f"{api.base}/api/metrics/current", timeout=10).status_code == 401


def test_history_between_two_times(api, gpu_host):  # noqa: F811
    wait_until(lambda: gpu_snapshots(api, "/api/metrics/current"), 30, "GPU snapshots")
    time.sleep(3)  # a few scrapes of history
    end_ms = int(time.time() * 1000)
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    history = gpu_snapshots(api, "/api/metrics/history", nodeId="gpu-node", **{"from": start, "to": end_ms})
    assert len({s["timestamp"] for s in history if s["gpuIndex"] == 0}) >= 2
    assert {s["gpuIndex"] for s in history} == {0, 1}
    bad = api.get(f"{api.base}/api/metrics/history", params={"from": "yesterday"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "VALIDATION_ERROR"


def test_alert_rule_crud_with_a_node_filter(api, prom):
    rule = {
        "name": "CPU on the reference node",
        "metric": "cpu_utilization",
        "condition": "gt",
        "threshold": -1,
        "duration": 0,
        "nodeFilter": "node-exporter-ref.*",
    }
    r = api.post(f"{api.base}/api/alerts", json=rule, timeout=30)
    assert r.status_code == 201, r.text
    created = r.json()
    assert {k: created[k] for k in rule} == rule and created["enabled"] is True
    rule_id = created["id"]
    v1 = api.get(f"{api.base}/api/v1/alerts/rules/{rule_id}", timeout=10).json()
    assert v1["expression"] == "cpu.utilization > -1" and v1["scope"]["hosts"] == "node-exporter-ref.*"
    # Only the hosts the filter names: the reference node fires, this machine does not.
    firing = prom.wait_for(f'ALERTS{{rule_id="{rule_id}",alertstate="firing"}}')
    assert {s["metric"]["host_id"] for s in firing} == {"node-exporter-reference"}
    history = wait_until(
        lambda: api.get(f"{api.base}/api/alerts/history", params={"ruleId": rule_id}, timeout=10).json(),
        30,
        "the rule's firing in the history",
    )
    assert history[0]["nodeId"] == "node-exporter-reference" and history[0]["resolvedAt"] is None
    assert set(history[0]) == {"id", "ruleId", "nodeId", "value", "firedAt", "resolvedAt"}

    r = api.put(f"{api.base}/api/alerts/{rule_id}", json={"threshold": 101, "duration": 300}, timeout=30)
    assert r.status_code == 200 and (r.json()["threshold"], r.json()["duration"]) == (101, 300)
    assert r.json()["nodeFilter"] == "node-exporter-ref.*"
    assert rule_id in {x["id"] for x in api.get(f"{api.base}/api/alerts", timeout=10).json()}
    assert api.delete(f"{api.base}/api/alerts/{rule_id}", timeout=30).status_code == 200
    assert rule_id not in {x["id"] for x in api.get(f"{api.base}/api/alerts", timeout=10).json()}


@pytest.mark.parametrize(
    "change,field",
    [
        ({"nodeFilter": "(?=lookahead)"}, "scope"),
        ({"nodeFilter": "unclosed("}, "scope"),
        ({"metric": "gpu_nonsense"}, "metric"),
        ({"condition": "ge"}, "condition"),
    ],
)
def test_bad_rules_are_a_400_naming_the_field(api, change, field):
    rule = {"name": "x", "metric": "gpu_utilization", "condition": "gt", "threshold": 1, **change}
    before = api.get(f"{api.base}/api/alerts", timeout=10).json()
    r = api.post(f"{api.base}/api/alerts", json=rule, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    assert field in str(r.json()["error"]["details"])
    assert api.get(f"{api.base}/api/alerts", timeout=10).json() == before


def test_a_node_filter_with_quotes_and_backslashes_reaches_promql_intact(api, stack):
    rule = {"name": "q", "metric": "gpu_utilization", "condition": "gt", "threshold": 101, "nodeFilter": 'a"b|c\\.d'}
    r = api.post(f"{api.base}/api/alerts", json=rule, timeout=30)
    assert r.status_code == 201, r.text
    groups = requests.get(f"{stack.urls()['prometheus']}/api/v1/rules", timeout=10).json()["data"]["groups"]
    query = next(x["query"] for g in groups for x in g["rules"] if x["name"] == r.json()["id"])
    assert 'host_id=~"a\\"b|c\\\\.d"' in query
    api.delete(f"{api.base}/api/alerts/{r.json()['id']}", timeout=30)


def test_viewers_read_and_admins_write(api):
    assert api.get(f"{api.base}/api/alerts", headers=api.viewer, timeout=10).status_code == 200
    rule = {"name": "v", "metric": "gpu_utilization", "condition": "gt", "threshold": 1}
    assert api.post(f"{api.base}/api/alerts", json=rule, headers=api.viewer, timeout=10).status_code == 403


def test_instant_readings_taken_moments_apart_make_one_snapshot():
    """Each reading's instant query is evaluated at its own millisecond: one GPU is still one snapshot."""
    from gateway.compat_metrics import FIELDS, snapshots

    results = [
        [{"metric": {"host_id": "n1", "gpu_index": "0"}, "value": [1_790_000_000.001 + k / 1000, str(k)]}]
        for k in range(len(FIELDS))
    ]
    (only,) = snapshots(results)
    assert only["nodeId"] == "n1" and only["gpuIndex"] == 0 and None not in only.values()
    assert only["timestamp"] == "2026-09-21T14:13:20Z"
