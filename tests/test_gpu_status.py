"""GPU health through the product: host status and reasons, the starter GPU alert rules, pushed points.

Fake-NVML GPU nodes (one per health state) are targets of the real stack's
Prometheus; the gateway judges them from the recorded ``fleet:`` layer, and
the stack's gateway has installed the starter rules into that Prometheus.
"""

from __future__ import annotations

import json
import time

import pynvml
import pytest
import requests

from exporter.catalog_points import Translator
from fleetwatch.testing.api import ADMIN, bearer, login
from rules_compiler.catalog import CATALOG
from tests.fake_nvml import UUID1, FakePynvml, h100
from tests.gpu_nodes import GpuNode
from tests.test_gpu import mig_gpu

UNCORRECTED_VOLATILE = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)


def two_gpus(**gpu0) -> list[dict]:
    return [h100(**gpu0), h100(UUID1, "00000000:00:07.0")]


# host id: (its GPUs as NVML answers, XIDs to report as (gpu, code), status, status_reasons)
STATES = {
    "gpu-healthy": (two_gpus(), [(0, 13)], "ok", []),  # at its power cap, and an application's XID: fine
    "gpu-ecc": (
        two_gpus(nvmlDeviceGetTotalEccErrors=lambda kind, counter: 3 if (kind, counter) == UNCORRECTED_VOLATILE else 0),
        [],
        "crit",
        ["crit: GPU 0 3 uncorrectable ECC errors"],
    ),
    "gpu-remap-failed": (
        two_gpus(nvmlDeviceGetRemappedRows=(0, 2, 0, 1)),
        [],
        "crit",
        ["crit: GPU 0 row remapping failed"],
    ),
    "gpu-xid": (two_gpus(), [(1, 79)], "crit", ["crit: GPU 1 fatal XID 79"]),
    "gpu-thermal": (
        two_gpus(nvmlDeviceGetCurrentClocksEventReasons=pynvml.nvmlClocksEventReasonHwThermalSlowdown | 0x4),
        [],
        "warn",
        ["warn: GPU 0 throttled (hw_thermal_slowdown)"],
    ),
    "gpu-pending": (
        two_gpus(nvmlDeviceGetRemappedRows=(1, 0, 1, 0)),
        [],
        "warn",
        ["warn: GPU 0 row remap pending a GPU reset"],
    ),
    # GPU 1 in MIG mode, its instance 9 busy: utilisation is shown, never judged.
    "gpu-mig": ([h100(), mig_gpu()], [(1, 13)], "ok", []),
}


@pytest.fixture(scope="module")
def gpu_hosts(stack, prom, app):
    """Every STATES node served and scraped, and known to the gateway as a host."""
    nodes = []
    for host_id, (devices, xids, _, _) in STATES.items():
        node = GpuNode(stack.config.state_dir, host_id, FakePynvml(devices))
        for gpu, code in xids:
            node.lib.xid(gpu, code)
        nodes.append(node)
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    for host_id in STATES:
        r = client.post(
            "/api/v1/hosts", json={"id": host_id, "hostname": f"{host_id}.invalid", "has_gpu": True}, headers=admin
        )
        assert r.status_code in (201, 409), r.get_json()
    # Every node's layer is recorded, XIDs included (the watcher has read them).
    for host_id, (_, xids, _, _) in STATES.items():
        prom.wait_for(f'fleet:gpu_throttled{{host_id="{host_id}"}}')
        if host_id == "gpu-mig":  # GPM needs two readings of each instance
            prom.wait_for(f'fleet:gpu_instance_utilization{{host_id="{host_id}"}}')
        for gpu, code in xids:
            prom.wait_for(f'fleet:gpu_xid_last{{host_id="{host_id}",gpu_index="{gpu}"}} == {code}')
    yield {n.host_id: n for n in nodes}
    for node in nodes:
        node.stop()


def test_each_gpu_health_state_gives_its_host_status_and_reasons(app, gpu_hosts):
    client = app.test_client()
    viewer = bearer(login(client, ADMIN)["access_token"])
    for host_id, (_, _, status, reasons) in STATES.items():
        host = client.get(f"/api/v1/hosts/{host_id}?range=15m", headers=viewer).get_json()["host"]
        assert (host["status"], host["status_reasons"]) == (status, reasons), host_id
    listed = client.get("/api/v1/hosts?status=crit&limit=200", headers=viewer).get_json()["hosts"]
    assert {h["id"] for h in listed} >= {"gpu-ecc", "gpu-remap-failed", "gpu-xid"}
    assert not {h["id"] for h in listed} & {"gpu-healthy", "gpu-thermal", "gpu-pending"}


def alerts(prom, rule_id: str, state: str) -> dict[str, set[str]]:
    result = prom.query(f'ALERTS{{alertname="{rule_id}",alertstate="{state}"}}')
    found: dict[str, set[str]] = {}
    for s in result:
        found.setdefault(s["metric"]["host_id"], set()).add(s["metric"].get("gpu_index", ""))
    return found


def test_starter_gpu_rules_fire_on_the_fakes_values(stack, prom, gpu_hosts):
    deadline = time.monotonic() + 30
    while True:
        xid, ecc = alerts(prom, "rule-007", "firing"), alerts(prom, "rule-008", "firing")
        thermal = alerts(prom, "rule-009", "pending")  # its 5m has not passed yet
        mine = (
            {h: g for h, g in xid.items() if h in STATES},
            {h: g for h, g in ecc.items() if h in STATES},
            {h: g for h, g in thermal.items() if h in STATES},
        )
        if mine == (
            {"gpu-xid": {"1"}, "gpu-healthy": {"0"}, "gpu-mig": {"1"}},
            {"gpu-ecc": {"0"}},
            {"gpu-thermal": {"0"}},
        ):
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.5)


def test_thermal_rule_is_editable_and_fires(stack, prom, gpu_hosts):
    base = stack.urls()["gateway"]
    s = requests.Session()
    token = s.post(f"{base}/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=10).json()
    s.headers["Authorization"] = f"Bearer {token['access_token']}"
    rule = s.get(f"{base}/api/v1/alerts/rules/rule-009", timeout=10).json()
    assert rule["name"] == "GPU thermal throttling" and rule["duration"] == "5m"
    r = s.put(f"{base}/api/v1/alerts/rules/rule-009", json={"duration": "static"}, timeout=30)
    assert r.status_code == 200, r.text
    try:
        deadline = time.monotonic() + 30
        while "gpu-thermal" not in alerts(prom, "rule-009", "firing"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert {h for h in alerts(prom, "rule-009", "firing") if h in STATES} == {"gpu-thermal"}
    finally:
        assert s.put(f"{base}/api/v1/alerts/rules/rule-009", json={"duration": "5m"}, timeout=30).status_code == 200


GPU_HEALTH_METRICS = ("gpu.xid_last", "gpu.ecc_uncorrectable", "gpu.remapped_rows_pending", "gpu.row_remap_failed")


@pytest.mark.parametrize("host_id", ["gpu-ecc", "gpu-xid", "gpu-pending", "gpu-thermal"])
def test_pushed_points_equal_the_recorded_layer(prom, gpu_hosts, host_id):
    """An agent's translation of the same families gives what the recording rules give."""
    node = gpu_hosts[host_id]
    pushed = {
        (name, tuple(sorted(labels.items()))): v
        for name, v, labels in Translator().points(node.registry.collect(), time.time())
    }
    for metric in (*GPU_HEALTH_METRICS, "gpu.throttled"):
        recorded = prom.query(f'{CATALOG[metric].record}{{host_id="{host_id}"}}')
        assert recorded, metric
        for s in recorded:
            labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k in CATALOG[metric].labels))
            assert pushed[(metric, labels)] == float(s["value"][1]), (metric, labels)


def test_mig_instances_are_their_gpus_sub_series(app, gpu_hosts):
    client = app.test_client()
    viewer = bearer(login(client, ADMIN)["access_token"])
    url = "/api/v1/metrics/query?host_id=gpu-mig&range=15m&metric="
    deadline = time.monotonic() + 15
    # Points fall on whole multiples of the 5 s step: the first comes once one has passed since the data began.
    while not (body := client.get(url + "gpu.instance.utilization", headers=viewer).get_json())["series"]:
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    got = sorted(((s["labels"], s["datapoints"][-1]["value"]) for s in body["series"]), key=str)
    assert got == [
        ({"gpu_index": "1", "gpu_instance": "2", "mig_profile": "3g.40gb"}, 80.0),
        ({"gpu_index": "1", "gpu_instance": "9", "mig_profile": "1g.10gb"}, 10.0),
    ]
    gpu1 = json.dumps({"gpu_index": "1", "gpu_instance": "9"})
    one = client.get(url + f"gpu.instance.memory_used_mb&labels={gpu1}", headers=viewer).get_json()
    assert [s["labels"] for s in one["series"]] == [{"gpu_index": "1", "gpu_instance": "9", "mig_profile": "1g.10gb"}]
    assert one["datapoints"][-1]["value"] == 512
    # The MIG GPU has no whole-GPU utilisation (NVML has none); GPU 0 does.
    whole = client.get(url + "gpu.utilization", headers=viewer).get_json()
    assert [s["labels"] for s in whole["series"]] == [{"gpu_index": "0"}]
