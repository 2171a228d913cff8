"""An agent's API key speaks for the hosts it was made for, and only so many (issue 13 #3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from fleetwatch.testing import services
from fleetwatch.testing.api import ADMIN, bearer, login, make_app
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until


@pytest.fixture
def gw(tmp_path):
    """An app whose store does not answer: binding is decided before any point is stored."""
    app = make_app(tmp_path, f"http://127.0.0.1:{free_port()}")
    client = app.test_client()
    client.admin = bearer(login(client, ADMIN)["access_token"])
    return app, client


def new_key(client, **fields) -> tuple[int, dict]:
    r = client.post("/api/v1/api-keys", json={"name": "k", **fields}, headers=client.admin)
    return r.status_code, r.get_json()


def beat(client, key: str, host_id: str):
    return client.post("/api/v1/ingest/heartbeat", json={"host_id": host_id}, headers={"X-API-Key": key})


def push(client, key: str, host_id: str, metrics: list | None = None):
    point = {"metric": "cpu.load1", "ts": datetime.now(UTC).isoformat(), "value": 1.0}
    body = {"host_id": host_id, "metrics": [point] if metrics is None else metrics}
    return client.post("/api/v1/ingest/metrics", json=body, headers={"X-API-Key": key})


def hosts(client) -> set[str]:
    """The inventory's host ids (read from the DB: the list's answer needs Prometheus for the hosts' states)."""
    from gateway.db import Host, db

    with client.application.app_context():
        return set(db.session.execute(db.select(Host.id)).scalars())


def test_a_key_must_say_which_hosts_it_speaks_for(gw):
    _, client = gw
    for fields in ({}, {"host_id": "a", "host_pattern": "b-*"}, {"host_pattern": "b-[0-9]"}, {"host_id": "a*"}):
        status, answer = new_key(client, **fields)
        assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR", (fields, answer)
    status, key = new_key(client, host_id="gpu-01")
    assert status == 201 and (key["host_id"], key["host_pattern"], key["allow_discovery"]) == (
        "gpu-01",
        "gpu-01",
        False,
    )
    listed = client.get("/api/v1/api-keys", headers=client.admin).get_json()["api_keys"]
    assert [k["host_pattern"] for k in listed] == ["gpu-01"]
    audit = client.get("/api/v1/audit?action=api_key_create", headers=client.admin).get_json()["events"]
    assert audit[0]["details"]["host_pattern"] == "gpu-01"


def test_a_key_bound_to_one_host_cannot_push_or_beat_for_another(gw):
    _, client = gw
    key = new_key(client, host_id="gpu-01")[1]["key"]
    assert beat(client, key, "gpu-01").status_code == 200  # the host it names: created by its first beat
    for call in (beat, push):
        r = call(client, key, "gpu-02")
        assert r.status_code == 403 and "gpu-02" in r.get_json()["error"]["message"], r.get_json()
    assert hosts(client) == {"gpu-01"}


def test_a_pattern_key_needs_discovery_for_hosts_not_in_the_inventory(gw):
    _, client = gw
    strict = new_key(client, host_pattern="gpu-*")[1]["key"]
    r = beat(client, strict, "gpu-07")
    assert r.status_code == 403 and "inventory" in r.get_json()["error"]["message"]
    assert hosts(client) == set()
    declared = {"id": "gpu-07", "hostname": "gpu-07", "exporter": "push"}
    assert client.post("/api/v1/hosts", json=declared, headers=client.admin).status_code == 201, "declared by an admin"
    assert beat(client, strict, "gpu-07").status_code == 200
    assert beat(client, strict, "cpu-01").status_code == 403  # outside the pattern, declared or not

    finder = new_key(client, host_pattern="gpu-*", allow_discovery=True)[1]["key"]
    assert beat(client, finder, "gpu-08").status_code == 200
    assert hosts(client) == {"gpu-07", "gpu-08"}


def test_a_keys_host_budget_is_kept_in_the_db_for_every_worker(gw, tmp_path):
    app, client = gw
    status, created = new_key(client, host_pattern="*", allow_discovery=True, max_hosts=2)
    assert status == 201 and created["max_hosts"] == 2
    key = created["key"]
    assert beat(client, key, "h-1").status_code == 200 and beat(client, key, "h-2").status_code == 200
    assert beat(client, key, "h-1").status_code == 200  # a host it has: no new place taken
    # A second worker (a second app on the same DB, with none of the first one's memory).
    other = make_app(tmp_path, app.config["PROMETHEUS_URL"]).test_client()
    r = beat(other, key, "h-3")
    assert r.status_code == 403 and "2 hosts" in r.get_json()["error"]["message"], r.get_json()
    assert beat(other, key, "h-2").status_code == 200
    assert hosts(client) == {"h-1", "h-2"}


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_keys_series_budget_is_kept_in_the_db_for_every_worker(backend, tmp_path, request):
    url = request.getfixturevalue("postgres").new_database() if backend == "postgresql" else None
    on = {"SQLALCHEMY_DATABASE_URI": url} if url else {}
    with services.prometheus(tmp_path / "prom") as prom:
        first = make_app(tmp_path, prom.url, **on).test_client()
        first.admin = bearer(login(first, ADMIN)["access_token"])
        key = new_key(first, host_pattern="*", allow_discovery=True, max_series=3)[1]["key"]
        ts = datetime.now(UTC).isoformat()
        cores = [{"metric": f"cpu.core.{n}", "ts": ts, "value": 1.0} for n in range(5)]
        assert push(first, key, "h-s1", cores[:2]).get_json()["accepted"] == 2
        other = make_app(tmp_path, prom.url, **on).test_client()  # a second worker: the count is the DB's
        answer = push(other, key, "h-s2", cores).get_json()
        assert (answer["accepted"], answer["rejected"]) == (1, 4), answer
        assert "series budget" in answer["errors"][0]["reason"]
        assert push(other, key, "h-s2", cores[:1]).get_json()["accepted"] == 1  # a series it has: still taken
        third = make_app(tmp_path, prom.url, **on).test_client()  # knows nothing: finds h-s1's series in the DB
        assert push(third, key, "h-s1", cores[:2]).get_json()["accepted"] == 2  # counted once, not again
        r = push(third, key, "h-s3", cores[:1])  # the budget is full: 3 series, whoever counts
        assert r.status_code == 400 and "series budget" in r.get_json()["error"]["message"], r.get_json()
        stored = PromClient(prom.url).query('count by (host_id) ({__name__="fleet:cpu_core"})')
        assert {s["metric"]["host_id"]: int(s["value"][1]) for s in stored} == {"h-s1": 2, "h-s2": 1}


def test_keys_from_before_binding_are_fleet_wide_relay_keys(tmp_path):
    """Revision 0009: a key made before keys were bound keeps working for every host, discovery included."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from gateway.schema_migrations import alembic_config, migrate

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gateway-old.db'}")
    with engine.begin() as connection:
        config = alembic_config(connection)
        before = ScriptDirectory.from_config(config).get_revision("0009").down_revision
        command.upgrade(config, before)
        connection.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at) "
                "VALUES ('key-001', 'old', 'h', 'fwk_x', '2026-01-01 00:00:00')"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT host_pattern, allow_discovery FROM api_keys")).one()
    assert (row.host_pattern, bool(row.allow_discovery)) == ("*", True)


def test_a_key_naming_no_host_with_nulls_is_a_400(gw):
    """Found by fuzzing: {"host_id": null} and no host_pattern names no host (it was a 500)."""
    _, client = gw
    r = client.post("/api/v1/api-keys", json={"name": "k", "host_id": None, "max_hosts": None}, headers=client.admin)
    assert r.status_code == 400 and "host_pattern" in r.get_json()["error"]["message"], r.get_json()


def test_half_a_character_in_a_body_is_a_400(gw):
    """Found by fuzzing: a lone \\udac3 escape parses in Python but no UTF-8 database takes it (it was a 500)."""
    _, client = gw
    body = '{"name": "\\udac3x", "host_pattern": "*"}'
    r = client.post("/api/v1/api-keys", data=body, headers={**client.admin, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "VALIDATION_ERROR", r.get_json()
    listed = client.get("/api/v1/api-keys", headers=client.admin).get_json()
    assert all(k["name"] != "\udac3x" for k in listed["api_keys"])


@pytest.mark.integration
def test_a_key_bound_to_one_host_cannot_push_job_figures_for_another(tmp_path):
    """Job figures (POST /v1/jobs/{id}/metrics) go through the key's binding as /api/v1/ingest does."""
    with services.prometheus(tmp_path / "prom") as prom:
        client = make_app(tmp_path, prom.url).test_client()
        client.admin = bearer(login(client, ADMIN)["access_token"])
        relay = new_key(client, host_pattern="*", allow_discovery=True)[1]["key"]
        r = client.post("/v1/jobs", json={"id": "job-b", "user": "u", "nodes": ["gpu-01", "gpu-02"]},
                        headers={"X-API-Key": relay})  # fmt: skip
        assert r.status_code == 201, r.get_json()
        bound = new_key(client, host_id="gpu-01")[1]["key"]
        for node in ("gpu-02", ""):  # no node: its figures would be stored as host "external"
            r = client.post(
                "/v1/jobs/job-b/metrics", json={"cpuUsage": 50.0, "node": node}, headers={"X-API-Key": bound}
            )
            assert r.status_code == 403 and "gpu-01" in r.get_json()["error"]["message"], (node, r.get_json())
        r = client.post(
            "/v1/jobs/job-b/metrics", json={"cpuUsage": 40.0, "node": "gpu-01"}, headers={"X-API-Key": bound}
        )
        assert r.status_code == 202, r.get_json()
        stored = PromClient(prom.url).query('{__name__="fleet:job_cpu_pct", jobid="job-b"}')
        assert {s["metric"]["host_id"]: float(s["value"][1]) for s in stored} == {"gpu-01": 40.0}
        job = client.get("/v1/jobs/job-b", headers=client.admin).get_json()
        assert job["cpu_usage_pct"] == 40.0, job  # the refused pushes changed nothing


def test_a_key_revoked_on_another_worker_is_refused_within_the_admitted_bound(tmp_path):
    """What a worker remembers of a key's admissions is trusted for API_KEY_ADMITTED_S, no longer."""
    store = f"http://127.0.0.1:{free_port()}"
    # This worker trusts the key's lookup for an hour: only the admissions' bound can refuse it.
    app = make_app(tmp_path, store, API_KEY_CACHE_S=3600, API_KEY_ADMITTED_S=0.5)
    client = app.test_client()
    client.admin = bearer(login(client, ADMIN)["access_token"])
    created = new_key(client, host_id="gpu-01")[1]
    assert beat(client, created["key"], "gpu-01").status_code == 200
    other = make_app(tmp_path, store).test_client()  # another worker, or replica, on the same DB
    r = other.delete(f"/api/v1/api-keys/{created['id']}", headers=bearer(login(other, ADMIN)["access_token"]))
    assert r.status_code in (200, 204), r.get_json()
    revoked = time.monotonic()
    wait_until(lambda: beat(client, created["key"], "gpu-01").status_code == 401, 5, "the revoked key refused", 0.05)
    assert time.monotonic() - revoked < 0.5 + 1.0  # the bound, and a second for a loaded machine


def test_a_keys_lowered_budget_holds_within_the_admitted_bound(tmp_path):
    app = make_app(tmp_path, f"http://127.0.0.1:{free_port()}", API_KEY_CACHE_S=3600, API_KEY_ADMITTED_S=0.3)
    client = app.test_client()
    client.admin = bearer(login(client, ADMIN)["access_token"])
    created = new_key(client, host_pattern="*", allow_discovery=True, max_hosts=1000)[1]
    assert beat(client, created["key"], "h-1").status_code == 200
    from gateway.db import db

    with app.app_context():  # no API lowers a key's budget: an operator's UPDATE, on any replica
        db.session.execute(sa.text("UPDATE api_keys SET max_hosts = 1 WHERE id = :id"), {"id": created["id"]})
        db.session.commit()
    lowered, tries = time.monotonic(), iter(range(2, 1000))
    # Each try a new host: one admitted before the worker looks again takes a place, as it may.
    wait_until(lambda: beat(client, created["key"], f"h-{next(tries)}").status_code == 403, 5, "the new budget", 0.05)
    assert time.monotonic() - lowered < 0.3 + 1.0
    assert beat(client, created["key"], "h-1").status_code == 200  # a host it has keeps working
    assert beat(client, created["key"], "h-new").status_code == 403


@pytest.mark.integration
def test_a_steady_agents_push_asks_the_db_nothing(tmp_path):
    """Once a worker knows a key's host and series, a push costs no DB round trip (the points go to Prometheus)."""
    with services.prometheus(tmp_path / "prom") as prom:
        app = make_app(tmp_path, prom.url)
        client = app.test_client()
        client.admin = bearer(login(client, ADMIN)["access_token"])
        key = new_key(client, host_id="gpu-01")[1]["key"]
        points = [{"metric": f"cpu.core.{n}", "ts": datetime.now(UTC).isoformat(), "value": 1.0} for n in range(4)]
        assert push(client, key, "gpu-01", points).get_json()["accepted"] == 4
        from gateway.db import db

        statements = []

        def note(_connection, _cursor, sql, *_):
            statements.append(sql)

        with app.app_context():
            engine = db.engine
        sa.event.listen(engine, "before_cursor_execute", note)
        try:
            points = [{**p, "ts": datetime.now(UTC).isoformat(), "value": 2.0} for p in points]
            assert push(client, key, "gpu-01", points).get_json()["accepted"] == 4
        finally:
            sa.event.remove(engine, "before_cursor_execute", note)
        assert statements == [], statements
        stored = PromClient(prom.url).query('{__name__="fleet:cpu_core", host_id="gpu-01"}')
        assert sorted(float(s["value"][1]) for s in stored) == [2.0] * 4
