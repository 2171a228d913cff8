"""Process-name masking (REQ-BE-PRIV-002): an admin's policy hides command names and users everywhere they show."""

from __future__ import annotations

import csv
import getpass
import io
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent, AgentConfig
from exporter.masking import MASKED, ProcessMasking
from exporter.push_buffer import PushBuffer
from exporter.registry import ExporterConfig, build_registry
from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app
from fleetwatch.testing.prom import PromClient
from tests.test_processes import make_proc

URL = "/api/v1/privacy/process-masking"
POLICY = {"names": ["secret-.*"], "users": ["alice"]}


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    with services.prometheus(tmp_path_factory.mktemp("prom-mask") / "data") as server:
        yield server


@pytest.fixture
def gw(prom, tmp_path):
    app = make_app(tmp_path, prom.url, PROCESS_MASKING_CACHE_S=0)
    client = app.test_client()
    client.admin = bearer(login(client, ADMIN)["access_token"])
    return client


def push(client, key: str, host_id: str, processes: list[tuple[str, str]], ago_s: int = 30):
    ts = (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat()
    points = [
        {"metric": "proc.top.cpu_pct", "ts": ts, "value": 50.0 - pid, "labels": {"pid": str(pid), "name": n, "user": u}}
        for pid, (n, u) in enumerate(processes, start=1)
    ]
    r = client.post("/api/v1/ingest/metrics", json={"host_id": host_id, "metrics": points}, headers={"X-API-Key": key})
    assert r.status_code == 200, r.get_json()


def test_the_policy_is_an_admins_audited_setting_of_valid_patterns(gw):
    assert gw.get(URL, headers=gw.admin).get_json() == {"names": [], "users": []}
    user = {"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}
    assert gw.post("/api/v1/users", json=user, headers=gw.admin).status_code == 201
    viewer = bearer(login(gw, VIEWER)["access_token"])
    assert gw.put(URL, json=POLICY, headers=viewer).status_code == 403
    bad = gw.put(URL, json={"names": ["secret-("]}, headers=gw.admin)
    assert bad.status_code == 400 and "names" in str(bad.get_json()["error"]["details"]), bad.get_json()
    assert gw.get(URL, headers=gw.admin).get_json() == {"names": [], "users": []}  # a refused change changes nothing
    assert gw.put(URL, json=POLICY, headers=gw.admin).get_json() == POLICY
    assert gw.get(URL, headers=gw.admin).get_json() == POLICY
    audit = gw.get("/api/v1/audit?action=process_masking_update", headers=gw.admin).get_json()["events"]
    assert [e["details"] for e in audit] == [POLICY]


def test_masked_names_never_reach_prometheus_and_older_ones_are_masked_on_read(gw, prom):
    key = gw.post(
        "/api/v1/api-keys", json={"name": "k", "host_pattern": "m-*", "allow_discovery": True}, headers=gw.admin
    ).get_json()["key"]
    push(gw, key, "m-before", [("secret-tool", "bob"), ("python3", "alice")], ago_s=40)  # before the policy
    assert gw.put(URL, json=POLICY, headers=gw.admin).status_code == 200
    push(gw, key, "m-after", [("secret-tool", "bob"), ("python3", "alice"), ("bash", "carol")])
    stored = PromClient(prom.url).wait_for('fleet:proc_top_cpu_pct{host_id="m-after"}')
    assert sorted((s["metric"]["name"], s["metric"]["user"]) for s in stored) == sorted(
        [(MASKED, "bob"), ("python3", MASKED), ("bash", "carol")]
    )
    for host in ("m-before", "m-after"):
        top = gw.get(f"/api/v1/processes/top?host_id={host}", headers=gw.admin).get_json()["processes"]
        seen = {(p["name"], p["user"]) for p in top}
        assert (MASKED, "bob") in seen and ("python3", MASKED) in seen, seen
        assert "secret-tool" not in str(top) and "alice" not in str(top)
        export = gw.post(
            "/api/v1/reports/export",
            json={"host_id": host, "metric": "proc.top.cpu_pct", "range": "1h"},
            headers=gw.admin,
        ).get_json()
        assert export["rows"] > 0, export
        text = gw.get("/" + export["download_url"].split("://", 1)[1].split("/", 1)[1]).get_data(as_text=True)
        rows = list(csv.DictReader(io.StringIO(text)))
        assert "secret-tool" not in text and "alice" not in text and {r["name"] for r in rows} >= {MASKED}


def test_the_exporter_masks_with_its_own_flags(tmp_path):
    (tmp_path / "proc").mkdir()
    proc = make_proc(tmp_path / "proc", {7: ("secret-job", 500, 900, ""), 8: ("visible", 100, 800, "")})
    me = getpass.getuser()
    args = ("--proc-root", str(proc), "--no-gpu", "--no-host", "--process-interval=0.5")
    with services.exporter(tmp_path, *args, "--mask-process", "secret-.*", "--mask-user", me) as exporter:
        families = {f.name: f for f in text_string_to_metric_families(requests.get(exporter.url, timeout=10).text)}
    names = {(s.labels["name"], s.labels["user"]) for s in families["fleet_top_process_resident_memory_bytes"].samples}
    assert names == {(MASKED, MASKED), ("visible", MASKED)}


def test_the_agent_takes_the_gateways_policy_with_its_heartbeat_and_masks_before_buffering(tmp_path):
    (tmp_path / "proc").mkdir()
    proc = make_proc(tmp_path / "proc", {7: ("secret-job", 500, 900, ""), 8: ("visible", 100, 800, "")})
    masking = ProcessMasking(names=["vis.*"])  # the host's own flag, kept beside the gateway's policy
    config = ExporterConfig(host=False, gpu=False, proc_root=str(proc), process_interval_s=0.5, masking=masking)
    registry, background = build_registry(config)
    for collector in background:
        collector.start()
    try:
        buffer = PushBuffer(tmp_path / "b.db")
        agent = Agent(AgentConfig(push="https://gw.example", api_key="fwk_x", host_id="h"), registry, buffer, masking)
        agent.apply({"process_masking": {"names": ["secret-.*"], "users": []}})
        agent.sample_once(time.time())
        _, points = buffer.oldest(1000)
        text = "\n".join(points)
        assert "secret-job" not in text and '"visible"' not in text and f'"{MASKED}"' in text, text
        agent.apply({})  # the gateway's policy cleared: the host's own flag still holds
        agent.sample_once(time.time() + 1)
        text = "\n".join(buffer.oldest(1000)[1][len(points) :])
        assert "secret-job" in text and '"visible"' not in text
    finally:
        for collector in background:
            collector.stop()


def test_heartbeats_answer_the_policy(gw):
    key = gw.post("/api/v1/api-keys", json={"name": "k", "host_id": "hb-1"}, headers=gw.admin).get_json()["key"]
    gw.put(URL, json=POLICY, headers=gw.admin)
    answer = gw.post("/api/v1/ingest/heartbeat", json={"host_id": "hb-1"}, headers={"X-API-Key": key}).get_json()
    assert answer["config"]["process_masking"] == POLICY
