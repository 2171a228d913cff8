"""The API as the spec's §8 examples use it, against real Prometheus scraping the real exporter."""

from __future__ import annotations

import json
import socket

import pytest

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app, targets_once
from fleetwatch.testing.waits import free_port, wait_until

ERROR_KEYS = {"code", "message", "details"}


@pytest.fixture(scope="module")
def admin(app):
    return bearer(login(app.test_client(), ADMIN)["access_token"])


@pytest.fixture(scope="module")
def viewer(app):
    return bearer(login(app.test_client(), VIEWER)["access_token"])


@pytest.fixture(scope="module")
def local_host(app, admin, prom, stack, tmp_path_factory):
    """This machine, added through the API like any host, with an exporter of its own."""
    exporter = services.exporter(tmp_path_factory.mktemp("exporter"), "--no-gpu", "--process-interval=1").up()
    address = exporter.url.removeprefix("http://").removesuffix("/metrics")
    c = app.test_client()
    r = c.post(
        "/api/v1/hosts",
        headers=admin,
        json={
            "id": "local-box",
            "hostname": socket.gethostname(),
            "ips": ["127.0.0.1"],
            "tags": {"role": "web", "zone": "us-west"},
            "exporter": address,
        },
    )
    assert r.status_code == 201, r.get_json()
    # The gateway's own file_sd entry for it, handed to the stack's Prometheus (only loopback targets:
    # the other hosts tests make are not there to scrape). Prometheus picks the file up by itself.
    written = targets_once(app.config["STATE_DIR"], lambda ts: any(t["labels"]["host_id"] == "local-box" for t in ts))
    mine = [t for t in written if t["labels"]["host_id"] == "local-box"]
    assert mine == [{"targets": [address], "labels": {"host_id": "local-box"}}]
    (stack.config.state_dir / "file_sd" / "gateway-local-box.json").write_text(json.dumps(mine))
    prom.wait_for('fleet:cpu_utilization{host_id="local-box"}', timeout_s=60)
    prom.wait_for('fleet:proc_top_cpu_pct{host_id="local-box"}', timeout_s=30)
    prom.wait_for('fleet:disk_used_pct{host_id="local-box"}', timeout_s=30)

    # Range queries evaluate at whole multiples of the 5 s step: wait for the first step with data.
    def in_range_queries(metric: str) -> list:
        query = f"/api/v1/metrics/query?host_id=local-box&metric={metric}&range=15m"
        return c.get(query, headers=admin).get_json().get("datapoints")

    wait_until(lambda: in_range_queries("cpu.utilization") and in_range_queries("mem.used_pct"), 15, "a range step")
    yield "local-box"
    exporter.stop()


def assert_error(r, status: int, code: str):
    body = r.get_json()
    assert r.status_code == status, body
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == code
    return body["error"]


# §8.2 ------------------------------------------------------------------------------------------


def test_create_host_as_the_spec_shows(client, admin):
    r = client.post(
        "/api/v1/hosts",
        headers=admin,
        json={"hostname": "db-02.example.com", "ips": ["10.0.2.10"], "tags": {"role": "db", "zone": "us-east"}},
    )
    assert r.status_code == 201
    body = r.get_json()
    assert body["status"] == "created" and body["id"].startswith("host-")


def test_host_list_as_the_spec_shows(client, viewer, local_host):
    r = client.get("/api/v1/hosts?tags=role:web,zone:us-west&limit=50&offset=0", headers=viewer)
    assert r.status_code == 200
    body = r.get_json()
    assert {"hosts", "total", "limit", "offset"} <= set(body)
    (host,) = [h for h in body["hosts"] if h["id"] == local_host]
    assert {"id", "hostname", "ips", "tags", "status", "last_seen_at", "metrics_summary"} <= set(host)
    assert set(host["metrics_summary"]) == {"cpu_pct", "mem_pct", "gpu_pct", "disk_pct", "net_tx_mbps"}
    assert 0 <= host["metrics_summary"]["mem_pct"] <= 100
    assert host["metrics_summary"]["gpu_pct"] is None  # no GPU here: null, not 0
    assert host["status"] in ("ok", "warn", "crit") and host["last_seen_at"].endswith("Z")
    assert all(h["tags"].get("role") == "web" and h["tags"].get("zone") == "us-west" for h in body["hosts"])


def test_the_host_summary_is_the_layer_now(client, viewer, local_host, prom):
    """The list's summary is the host's layer series as Prometheus holds them at the request: its fullest
    filesystem, its NICs' sum (this machine has several of each, or one), not a copy recorded a round before."""
    host = f'host_id="{local_host}"'
    layer = {
        "cpu_pct": f"fleet:cpu_utilization{{{host}}}",
        "disk_pct": f"max(fleet:disk_used_pct{{{host}}})",
        "net_tx_mbps": f"sum(fleet:net_tx_mbps{{{host}}})",
    }

    def values() -> dict[str, float]:
        return {field: round(float(prom.query(q)[0]["value"][1]), 1) for field, q in layer.items()}

    # A new evaluation of the layer between the reads changes them: the three reads must agree around the list's.
    for _ in range(10):
        before = values()
        r = client.get("/api/v1/hosts?tags=role:web,zone:us-west", headers=viewer)
        if before == values():
            break
    (shown,) = [h["metrics_summary"] for h in r.get_json()["hosts"] if h["id"] == local_host]
    assert {field: shown[field] for field in layer} == before


def test_host_without_exporter_is_crit_never_seen(client, admin, viewer):
    host = client.post(
        "/api/v1/hosts", headers=admin, json={"hostname": "ghost.example.com", "tags": {"role": "ghost"}}
    ).get_json()["id"]
    body = client.get("/api/v1/hosts?tags=role:ghost&status=crit", headers=viewer).get_json()
    assert [h["id"] for h in body["hosts"]] == [host]
    assert body["hosts"][0]["status_reasons"] == ["crit: never seen"]
    assert client.get("/api/v1/hosts?tags=role:ghost&status=ok", headers=viewer).get_json()["total"] == 0


def test_host_detail_as_the_spec_shows(client, viewer, local_host):
    r = client.get(f"/api/v1/hosts/{local_host}?range=15m", headers=viewer)
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["host"]["id"] == local_host
    assert {"cpu.utilization", "mem.used_pct", "gpu.utilization"} <= set(body["metrics"])
    points = body["metrics"]["mem.used_pct"]
    assert points and {"ts", "value"} == set(points[0])
    assert body["metrics"]["gpu.utilization"] == []
    assert body["resolution"] == "5s"


def test_delete_host_as_the_spec_shows(client, admin, app):
    host = client.post("/api/v1/hosts", headers=admin, json={"hostname": "gone.example.com"}).get_json()["id"]
    targets = targets_once(app.config["STATE_DIR"], lambda ts: host in {t["labels"]["host_id"] for t in ts})
    assert host in {t["labels"]["host_id"] for t in targets}
    r = client.delete(f"/api/v1/hosts/{host}", headers=admin)
    assert r.status_code == 200 and r.get_json()["status"] == "deleted"
    targets = targets_once(app.config["STATE_DIR"], lambda ts: host not in {t["labels"]["host_id"] for t in ts})
    assert host not in {t["labels"]["host_id"] for t in targets}
    assert_error(client.get(f"/api/v1/hosts/{host}", headers=admin), 404, "NOT_FOUND")


def test_tags_reach_promql_as_fleet_host_info(client, local_host):
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("fleet_host_info{") and 'host_id="local-box"' in x)
    assert 'role="web"' in line and 'zone="us-west"' in line


# §8.3 ------------------------------------------------------------------------------------------


def test_metrics_query_as_the_spec_shows(client, viewer, local_host, prom):
    r = client.get(f"/api/v1/metrics/query?host_id={local_host}&metric=cpu.utilization&range=1h", headers=viewer)
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["metric"] == "cpu.utilization" and body["host_id"] == local_host
    assert body["resolution"] == "5s" and body["datapoints"]
    assert all(0 <= p["value"] <= 100 and p["ts"].endswith("Z") for p in body["datapoints"])


def test_metrics_query_with_labels(client, viewer, local_host):
    q = json.dumps({"mountpoint": "/"})
    r = client.get(
        f"/api/v1/metrics/query?host_id={local_host}&metric=disk.used_pct&range=15m&labels={q}", headers=viewer
    )
    body = r.get_json()
    assert r.status_code == 200, body
    assert [s["labels"] for s in body["series"]] == [{"mountpoint": "/"}]


def test_unknown_metric_lists_the_valid_ones(client, viewer, local_host):
    err = assert_error(
        client.get(f"/api/v1/metrics/query?host_id={local_host}&metric=cpu.bogus", headers=viewer),
        400,
        "VALIDATION_ERROR",
    )
    assert "cpu.utilization" in err["details"]["valid"]


def test_unknown_host_is_404_listing_hosts(client, viewer, local_host):
    err = assert_error(
        client.get("/api/v1/metrics/query?host_id=nope&metric=cpu.utilization", headers=viewer), 404, "NOT_FOUND"
    )
    assert local_host in err["details"]["valid"]


def test_hostile_label_values_are_escaped_not_pasted(client, viewer, local_host):
    q = json.dumps({"mountpoint": '"} or vector(1) or {a="\n'})
    r = client.get(f"/api/v1/metrics/query?host_id={local_host}&metric=disk.used_pct&labels={q}", headers=viewer)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["series"] == []


def test_catalog_lists_names_units_descriptions(client, viewer):
    metrics = {m["name"]: m for m in client.get("/api/v1/metrics/catalog", headers=viewer).get_json()["metrics"]}
    assert metrics["cpu.utilization"]["unit"] == "%"
    assert all(m["description"] for m in metrics.values())


# §8.4 ------------------------------------------------------------------------------------------


def test_top_processes_as_the_spec_shows(client, viewer, local_host):
    r = client.get(f"/api/v1/processes/top?host_id={local_host}&metric=mem&limit=5", headers=viewer)
    body = r.get_json()
    assert r.status_code == 200, body
    assert 1 <= len(body["processes"]) <= 5
    first = body["processes"][0]
    assert {"pid", "name", "cpu_pct", "mem_mb", "gpu_mem_mb", "gpu_index"} <= set(first)
    mems = [p["mem_mb"] for p in body["processes"]]
    assert mems == sorted(mems, reverse=True) and mems[0] > 1


# §8.6 ------------------------------------------------------------------------------------------


def test_csv_export_as_the_spec_shows(client, admin, local_host):
    r = client.post(
        "/api/v1/reports/export",
        headers=admin,
        json={"format": "csv", "host_id": local_host, "metric": "mem.used_pct", "range": "15m"},
    )
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["expires_at"].endswith("Z") and "sig=" in body["download_url"]
    path = body["download_url"].split("://", 1)[1].split("/", 1)[1]
    csv = client.get("/" + path)  # no login: the signature is the permission
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).splitlines()
    assert lines[0] == "timestamp,host_id,metric,value"  # mem.used_pct has no labels of its own
    assert len(lines) == body["rows"] + 1 and body["rows"] > 0
    tampered = client.get("/" + path.replace("sig=", "sig=0"))
    assert_error(tampered, 403, "FORBIDDEN")


# §8.8 and conventions ------------------------------------------------------------------------


def test_error_shapes(client, admin):
    assert_error(client.get("/api/v1/nothing-here", headers=admin), 404, "NOT_FOUND")
    assert_error(client.put("/api/v1/hosts", headers=admin, json={}), 405, "METHOD_NOT_ALLOWED")
    assert_error(
        client.post("/api/v1/hosts", headers={**admin, "Content-Type": "application/json"}, data="{not json"),
        400,
        "VALIDATION_ERROR",
    )
    assert_error(
        client.post("/api/v1/hosts", headers={**admin, "Content-Type": "text/plain"}, data="hostname=x"),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert_error(
        client.post(
            "/api/v1/hosts",
            headers={**admin, "Content-Type": "application/json"},
            data=b'{"hostname": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        ),
        413,
        "PAYLOAD_TOO_LARGE",
    )


def test_validation_says_which_field_and_why_and_changes_nothing(client, admin):
    before = client.get("/api/v1/hosts?limit=1", headers=admin).get_json()["total"]
    err = assert_error(
        client.post(
            "/api/v1/hosts",
            headers=admin,
            json={"hostname": "ok.example.com", "ips": ["999.1.1.1"], "tags": {"job": "x"}},
        ),
        400,
        "VALIDATION_ERROR",
    )
    assert "ips" in err["details"]["json"] and "tags" in err["details"]["json"]
    assert "ips" in err["message"]
    assert client.get("/api/v1/hosts?limit=1", headers=admin).get_json()["total"] == before


def test_duplicate_host_id_is_409(client, admin):
    first = client.post("/api/v1/hosts", headers=admin, json={"id": "dup-1", "hostname": "dup.example.com"})
    assert first.status_code == 201, first.get_json()
    assert_error(
        client.post("/api/v1/hosts", headers=admin, json={"id": "dup-1", "hostname": "dup.example.com"}),
        409,
        "CONFLICT",
    )


def test_pagination(client, admin):
    for i in range(3):
        client.post("/api/v1/hosts", headers=admin, json={"hostname": f"page{i}.example.com", "tags": {"set": "p"}})
    first = client.get("/api/v1/hosts?tags=set:p&limit=2&offset=0", headers=admin).get_json()
    second = client.get("/api/v1/hosts?tags=set:p&limit=2&offset=2", headers=admin).get_json()
    assert first["total"] == second["total"] == 3
    assert len(first["hosts"]) == 2 and len(second["hosts"]) == 1
    assert_error(client.get("/api/v1/hosts?limit=0", headers=admin), 400, "VALIDATION_ERROR")


def test_prometheus_down_is_503_with_retry_after(tmp_path):
    app = make_app(tmp_path, f"http://127.0.0.1:{free_port()}")
    c = app.test_client()
    admin = bearer(login(c, ADMIN)["access_token"])
    assert c.post("/api/v1/hosts", headers=admin, json={"hostname": "a.example.com"}).status_code == 201
    r = c.get("/api/v1/hosts", headers=admin)
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    assert r.headers["Retry-After"] == "5"
