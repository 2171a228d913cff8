"""Seed 004's jobs API for other schedulers' jobs: roles, filters, paging, pushed metrics, hpc_job_* on /metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, api_session, bearer, login, make_app
from gateway.job_sync import sync_if_due
from gateway.remote_write import RemoteWriter, encode_labels, encode_timeseries
from rules_compiler.alerts import render_alert_rules, to_rule

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def new_db(request, tmp_path_factory):
    """Makes a new empty database of the kind under test: SQLite (one gateway) or PostgreSQL (replicas); its URL."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres").new_database
    tmp = tmp_path_factory.mktemp("sqlite")
    return lambda: f"sqlite:///{tmp}/{time.monotonic_ns()}.db"


@pytest.fixture(scope="module")
def world(tmp_path_factory, new_db):
    """A real Prometheus taking remote write, the gateway in-process on it; admin, viewer and agent headers."""
    tmp = tmp_path_factory.mktemp("jobs-api")
    with services.prometheus(tmp / "prom" / "data") as prom:
        app = make_app(
            tmp,
            prom.url,
            SQLALCHEMY_DATABASE_URI=new_db(),
            RATE_LIMIT_READS_PER_MIN=100_000,
            RATE_LIMIT_WRITES_PER_MIN=100_000,
        )
        client = app.test_client()
        admin = bearer(login(client, ADMIN)["access_token"])
        r = client.post(
            "/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin
        )
        assert r.status_code == 201, r.get_json()
        viewer = bearer(login(client, VIEWER)["access_token"])
        key = client.post("/api/v1/api-keys", json={"name": "scheduler"}, headers=admin).get_json()["key"]
        yield client, {"admin": admin, "viewer": viewer, "agent": {"X-API-Key": key}}, prom


def test_other_schedulers_jobs_are_posted_listed_filtered_patched_and_deleted(world):
    client, who, _ = world
    body = {"id": "job-001", "user": "researcher", "nodes": ["node-1", "node-2"], "partition": "gpu", "gpus": 2}
    assert client.post("/v1/jobs", json=body, headers=who["viewer"]).status_code == 401  # a key, not a login
    r = client.post("/v1/jobs", json=body, headers=who["agent"])
    assert r.status_code == 201, r.get_json()
    job = r.get_json()
    assert job["id"] == "job-001" and job["nodes"] == ["node-1", "node-2"] and job["state"] == "running"
    assert job["scheduler"] == "external" and job["start_time"] and job["end_time"] is None
    assert client.post("/v1/jobs", json=body, headers=who["agent"]).status_code == 409
    other = {"id": "job-002", "user": "someone", "nodes": ["node-3"], "state": "pending"}
    assert client.post("/v1/jobs", json=other, headers=who["agent"]).status_code == 201

    def ids(query: str) -> list[str]:
        r = client.get(f"/v1/jobs?{query}", headers=who["viewer"])
        assert r.status_code == 200, r.get_json()
        return [j["id"] for j in r.get_json()["jobs"]]

    assert ids("state=running") == ["job-001"]
    assert ids("user=someone") == ["job-002"]
    assert ids("node=node-2") == ["job-001"] and ids("node=node-") == []
    assert ids("partition=gpu&since=1h") == ["job-001"]
    page = client.get("/v1/jobs?limit=1&offset=1", headers=who["viewer"]).get_json()
    assert page["total"] == 2 and page["limit"] == 1 and len(page["jobs"]) == 1

    r = client.patch("/v1/jobs/job-001", json={"state": "completed"}, headers=who["agent"])
    assert r.status_code == 200 and r.get_json()["end_time"] and r.get_json()["state"] == "completed"
    assert client.delete("/v1/jobs/job-002", headers=who["viewer"]).status_code == 403
    assert client.delete("/v1/jobs/job-002", headers=who["admin"]).status_code == 204
    assert client.get("/v1/jobs/job-002", headers=who["viewer"]).status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"id": "12345"}, "id"),  # Slurm's
        ({"id": "bad id!"}, "id"),
        ({"id": "job-x", "state": "exploded"}, "state"),
        ({"id": "job-x", "nodes": ["a b"]}, "nodes"),
        ({"id": "job-x", "cpus": -1}, "cpus"),
    ],
)
def test_bad_jobs_are_refused_in_the_error_shape_and_change_nothing(world, body, field):
    client, who, _ = world
    r = client.post("/v1/jobs", json=body, headers=who["agent"])
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and field in str(error["details"]) + error["message"]
    assert client.get("/v1/jobs/job-x", headers=who["viewer"]).status_code == 404


def test_pushed_job_metrics_reach_prometheus_the_series_and_hpc_job_families(world):
    client, who, prom = world
    client.post("/v1/jobs", json={"id": "job-push", "user": "u1", "partition": "p1"}, headers=who["agent"])
    r = client.post("/v1/jobs/job-push/metrics", json={"cpuUsage": 75.5, "memoryUsageMb": 4096, "gpuUsage": 50.0},
                    headers=who["agent"])  # fmt: skip
    assert r.status_code == 202, r.get_json()
    assert client.post("/v1/jobs/job-push/metrics", json={"cpuUsage": 130}, headers=who["agent"]).status_code == 400
    assert client.post("/v1/jobs/job-push/metrics", json={}, headers=who["agent"]).status_code == 400

    got = client.get("/v1/jobs/job-push/metrics", headers=who["viewer"]).get_json()
    assert got["resolution"] == "5s"  # a job of seconds: raw, as for a 15-minute host range
    assert [p["value"] for p in got["series"]["cpu_pct"]][-1:] == [75.5]
    assert [p["value"] for p in got["series"]["memory_mb"]][-1:] == [4096.0]
    assert [p["value"] for p in got["series"]["gpu_pct"]][-1:] == [50.0]

    text = client.get("/metrics").get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("hpc_job")
    }
    labels = (
        ("job_id", "job-push"),
        ("partition", "p1"),
        ("scheduler", "external"),
        ("state", "running"),
        ("user", "u1"),
    )
    assert samples[("hpc_job_cpu_usage_percent", labels)] == 75.5
    assert samples[("hpc_job_memory_usage_bytes", labels)] == 4096 * 2**20
    assert samples[("hpc_job_gpu_usage_percent", labels)] == 50.0
    assert 0 <= samples[("hpc_job_runtime_seconds", labels)] < 60
    assert samples[("hpc_job_state_total", (("state", "running"),))] >= 1
    assert samples[("hpc_job_total", ())] >= 1
    # A job that ended leaves the per-job gauges, not the count by state.
    client.patch("/v1/jobs/job-push", json={"state": "failed"}, headers=who["agent"])
    text = client.get("/metrics").get_data(as_text=True)
    assert 'job_id="job-push"' not in text and 'hpc_job_state_total{state="failed"}' in text


def test_v1_health_answers_without_a_login(world):
    client, _, _ = world
    assert client.get("/v1/health").get_json() == {"status": "ok"}


def test_cluster_endpoints_without_a_slurm_collector_say_unknown(world):
    client, who, _ = world
    assert client.get("/api/cluster/status").status_code == 401
    status = client.get("/api/cluster/status", headers=who["viewer"]).get_json()
    assert status["health"] == "unknown" and status["nodes"] == {"total": 0, "by_state": {}}
    assert client.get("/api/cluster/nodes", headers=who["viewer"]).get_json() == {"nodes": []}
    assert client.get("/api/metrics/slurm", headers=who["viewer"]).get_json()["up"] is None


def test_one_worker_of_several_syncs_slurm_jobs_per_round(world, new_db, tmp_path):
    """Two gateways (workers or replicas) on one DB, reading at once: the DB's stamp lets exactly one sync."""
    _, _, prom = world
    shared = new_db()
    apps = [make_app(tmp_path, prom.url, SQLALCHEMY_DATABASE_URI=shared) for _ in range(2)]
    barrier = threading.Barrier(len(apps))

    def read(app) -> bool:
        with app.app_context():
            barrier.wait()
            return sync_if_due(app.extensions["prometheus"], 60, 3600)

    with ThreadPoolExecutor(len(apps)) as pool:
        assert sorted(pool.map(read, apps)) == [False, True]
    with apps[0].app_context():  # within the 60 s: nobody
        assert sync_if_due(apps[0].extensions["prometheus"], 60, 3600) is False
        assert sync_if_due(apps[0].extensions["prometheus"], 0, 3600) is True  # due again


def test_the_gpu_idle_starter_rule_is_installed_disabled(stack):
    """`fleetwatch up`'s gateway, on its first start: the rule is there for an admin to enable, and compiles."""
    s = api_session(stack.urls()["gateway"])
    rule = s.get(f"{s.base}/api/v1/alerts/rules/rule-010", timeout=10).json()
    assert (rule["name"], rule["expression"], rule["duration"], rule["enabled"]) == (
        "GPU allocated and idle",
        "job.gpu.utilization < 5",
        "30m",
        False,
    )
    loaded = requests.get(f"{stack.urls()['prometheus']}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert "rule-010" not in {r["name"] for g in loaded for r in g["rules"]}  # disabled: not compiled
    compiled = render_alert_rules([to_rule(SimpleNamespace(**{**rule, "enabled": True}))], 30, "t")
    assert "expr: fleet:job_gpu_utilization < 5" in compiled and "for: 1800s" in compiled


def test_gpu_efficiency_names_the_idle_gpu_and_the_fleet_view_counts_its_hours(world):
    """A 2-GPU job of 10 minutes whose GPU 1 never worked, from jobstats' series written into the real Prometheus."""
    client, who, prom = world
    now = time.time()
    start = now - 600
    job = {"id": "job-gpu", "user": "gpu-user", "partition": "gpu", "cpus": 4, "gpus": 2,
           "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))}  # fmt: skip
    assert client.post("/v1/jobs", json=job, headers=who["agent"]).status_code == 201
    steps = range(int(start) + 1, int(now), 5)
    job_level = [("jobid", "job-gpu"), ("step", ""), ("task", ""), ("instance", "node-9:9101")]
    series = [
        # GPU 0 busy at 90 %, GPU 1 at 0 %; four CPUs of which one works (1 CPU-second per second).
        *(
            ([("__name__", "nvidia_gpu_duty_cycle"), ("instance", "node-9:9101"), ("jobid", "job-gpu"),
              ("ordinal", str(i)), ("uuid", f"GPU-{i}")], [(t * 1000, util) for t in steps])
            for i, util in ((0, 90.0), (1, 0.0))
        ),
        ([("__name__", "cgroup_cpu_total_seconds"), *job_level], [(t * 1000, float(t - start)) for t in steps]),
        ([("__name__", "cgroup_cpus"), *job_level], [(t * 1000, 4.0) for t in steps]),
    ]  # fmt: skip
    RemoteWriter(f"{prom.url}/api/v1/write").write(
        [encode_timeseries(encode_labels(sorted(labels)), samples) for labels, samples in series]
    )

    eff = client.get("/v1/jobs/job-gpu/efficiency", headers=who["viewer"]).get_json()
    assert [(g["gpu"], g["mean_utilization_pct"], g["idle_pct"]) for g in eff["gpus"]] == [
        ("0", 90.0, 0.0),
        ("1", 0.0, 100.0),
    ]
    assert eff["gpus"][1]["idle_minutes"] == pytest.approx(10, abs=0.5)
    assert eff["cpu_efficiency_pct"] == pytest.approx(25, abs=2)  # one of four CPUs
    assert eff["verdict"] == "wasteful"
    assert eff["reasons"] == [
        f"CPU efficiency {eff['cpu_efficiency_pct']:.0f} %: 1.0 of 4 CPUs busy on average: request 2 CPUs",
        "GPU 1 idle 100 % of the job: request 1 GPU",
    ]

    groups = client.get("/v1/jobs/efficiency?by=user&since=1h", headers=who["viewer"]).get_json()["groups"]
    mine = next(g for g in groups if g["user"] == "gpu-user")
    assert mine["jobs"] == 1
    assert mine["gpu_hours_allocated"] == pytest.approx(2 * 600 / 3600, rel=0.05)
    assert mine["gpu_hours_used"] == pytest.approx(0.9 * 600 / 3600, rel=0.1)
    assert mine["cpu_hours_used"] == pytest.approx(600 / 3600, rel=0.05)
    assert groups[0]["user"] == "gpu-user"  # the most GPU-hours wasted comes first
