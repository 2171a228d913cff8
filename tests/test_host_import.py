"""CSV import of hosts (REQ-HOST-003) through the API, on a real Prometheus of its own (it scrapes nothing)."""

from __future__ import annotations

import pytest

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app, targets_once

CSV = {"Content-Type": "text/csv"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    with services.prometheus(tmp_path_factory.mktemp("import-prometheus") / "tsdb") as server:
        yield server.url


@pytest.fixture(scope="module")
def importer(prometheus, tmp_path_factory):
    """The gateway in-process on its own DB and targets file; admin and viewer tokens."""
    app = make_app(tmp_path_factory.mktemp("import"), prometheus, RATE_LIMIT_WRITES_PER_MIN=100_000)
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    client.post("/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin)
    client.admin, client.viewer = admin, bearer(login(client, VIEWER)["access_token"])
    client.app = app
    return client


def host_count(client) -> int:
    return client.get("/api/v1/hosts?limit=1", headers=client.admin).get_json()["total"]


def test_import_adds_every_row_with_its_fields(importer):
    body = (
        "hostname,ips,tags,exporter,id\n"
        "web-01.example.com,10.0.1.5;10.0.1.6,role:web;zone:us-east,,web-01\n"
        "db-02.example.com,,,10.0.2.10:9100,\n"
        "gpu-03.example.com\n"
    )
    r = importer.post("/api/v1/hosts/import", data=body, headers={**importer.admin, **CSV})
    assert r.status_code == 201, r.get_json()
    result = r.get_json()
    assert result["created"] == 3 and result["updated"] == 0 and result["ids"][0] == "web-01"
    web = importer.get("/api/v1/hosts/web-01", headers=importer.admin).get_json()["host"]
    assert web["ips"] == ["10.0.1.5", "10.0.1.6"] and web["tags"] == {"role": "web", "zone": "us-east"}
    assert web["source"] == "import"
    db = importer.get(f"/api/v1/hosts/{result['ids'][1]}", headers=importer.admin).get_json()["host"]
    assert db["hostname"] == "db-02.example.com" and db["exporter"] == "10.0.2.10:9100"
    listed = importer.get("/api/v1/hosts?tags=zone:us-east", headers=importer.admin).get_json()["hosts"]
    assert [h["id"] for h in listed] == ["web-01"]
    targets = targets_once(importer.app.config["STATE_DIR"], lambda ts: len(ts) >= 3)
    assert {"targets": ["10.0.2.10:9100"], "labels": {"host_id": result["ids"][1]}} in targets
    assert {"targets": ["10.0.1.5:9101"], "labels": {"host_id": "web-01"}} in targets  # first ip, default port
    audit = importer.get("/api/v1/audit?action=host_import", headers=importer.admin).get_json()["events"]
    assert audit and audit[0]["details"]["created"] == 3


def test_a_push_row_is_a_pushing_host_never_a_target_and_an_upsert_address_scrapes_it(importer):
    body = "hostname,exporter,id\npush-01.example.com,push,push-01\nscraped-01.example.com,10.0.9.8:9100,scraped-01\n"
    assert importer.post("/api/v1/hosts/import", data=body, headers={**importer.admin, **CSV}).status_code == 201
    host = importer.get("/api/v1/hosts/push-01", headers=importer.admin).get_json()["host"]
    assert host["exporter"] == "push" and host["status_reasons"] == ["crit: agent never seen"], host
    # The file once it holds this import (its scraped row): the pushing host is not in it.
    targets = targets_once(importer.app.config["STATE_DIR"], lambda ts: "scraped-01" in str(ts))
    assert {t["labels"]["host_id"] for t in targets} >= {"scraped-01"}
    assert "push-01" not in {t["labels"]["host_id"] for t in targets}
    again = "hostname,exporter,id\npush-01.example.com,10.0.9.9:9100,push-01\n"
    r = importer.post("/api/v1/hosts/import?upsert=true", data=again, headers={**importer.admin, **CSV})
    assert r.status_code == 201
    targets = targets_once(importer.app.config["STATE_DIR"], lambda ts: "push-01" in str(ts))
    assert {"targets": ["10.0.9.9:9100"], "labels": {"host_id": "push-01"}} in targets


def test_bad_rows_are_named_by_number_and_field_and_nothing_is_imported(importer):
    before = host_count(importer)
    body = (
        "hostname,ips,tags,id\n"
        "ok-01.example.com,10.0.0.1,role:web,ok-01\n"
        "bad ip.example.com,10.0.0.300,,\n"
        "tags.example.com,,role-web,\n"
        ",10.0.0.4,,\n"
        "twice.example.com,,,ok-01\n"
    )
    r = importer.post("/api/v1/hosts/import", data=body, headers={**importer.admin, **CSV})
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    named = {(e["row"], e["field"]) for e in error["details"]["errors"]}
    assert named == {(2, "hostname"), (2, "ips"), (3, "tags"), (4, "hostname"), (5, "id")}
    assert host_count(importer) == before


def test_an_existing_id_is_a_conflict_unless_upsert(importer):
    first = "hostname,tags,id\nup-01.example.com,role:db,up-01\n"
    assert importer.post("/api/v1/hosts/import", data=first, headers={**importer.admin, **CSV}).status_code == 201
    again = "hostname,tags,id\nup-01.example.com,role:web,up-01\nup-02.example.com,,up-02\n"
    r = importer.post("/api/v1/hosts/import", data=again, headers={**importer.admin, **CSV})
    assert r.status_code == 409 and r.get_json()["error"]["details"]["existing"] == ["up-01"]
    assert importer.get("/api/v1/hosts/up-02", headers=importer.admin).status_code == 404
    r = importer.post("/api/v1/hosts/import?upsert=true", data=again, headers={**importer.admin, **CSV})
    assert r.status_code == 201 and (r.get_json()["created"], r.get_json()["updated"]) == (1, 1)
    host = importer.get("/api/v1/hosts/up-01", headers=importer.admin).get_json()["host"]
    assert host["tags"] == {"role": "web"}


def test_import_is_for_admins_and_takes_csv(importer):
    body = "hostname\nv.example.com\n"
    r = importer.post("/api/v1/hosts/import", data=body, headers={**importer.viewer, **CSV})
    assert r.status_code == 403
    r = importer.post("/api/v1/hosts/import", json={"hostname": "v.example.com"}, headers=importer.admin)
    assert r.status_code == 415 and r.get_json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    r = importer.post("/api/v1/hosts/import", data="name,ip\nx,1\n", headers={**importer.admin, **CSV})
    assert r.status_code == 400 and r.get_json()["error"]["details"]["unknown_columns"] == ["name", "ip"]


def test_ten_thousand_rows_in_one_request(importer):
    before = host_count(importer)
    rows = "".join(
        f"n{i:05d}.example.com,10.9.{i // 250}.{i % 250 + 1},rack:r{i % 40};zone:z{i % 3},,\n" for i in range(10_000)
    )
    r = importer.post(
        "/api/v1/hosts/import", data="hostname,ips,tags,exporter,id\n" + rows, headers={**importer.admin, **CSV}
    )
    assert r.status_code == 201 and r.get_json()["created"] == 10_000
    assert host_count(importer) == before + 10_000
    targets = targets_once(importer.app.config["STATE_DIR"], lambda ts: len(ts) >= before + 10_000)
    assert len(targets) == before + 10_000
