"""The gateway on PostgreSQL (DATABASE_URL), as it runs with replicas: schema, auth, limits, hosts, audit."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleetwatch.testing.api import ADMIN, VIEWER, bearer, login, make_app
from gateway.db import db
from gateway.schema_migrations import migrate


def test_migrations_build_exactly_the_models_schema_on_postgres(postgres):
    engine = sa.create_engine(postgres.new_database())
    migrate(engine)
    migrate(engine)  # a second start finds it current
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), db.metadata) == []
    engine.dispose()


def test_the_gateway_works_on_postgres(postgres, stack, tmp_path):
    app = make_app(tmp_path, stack.urls()["prometheus"], SQLALCHEMY_DATABASE_URI=postgres.new_database())
    assert app.extensions["rate_counters"] is None  # the counters are in the shared DB, for replicas
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])

    r = client.post("/api/v1/users", json={"email": VIEWER[0], "password": VIEWER[1], "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.get_json()
    created = client.post(
        "/api/v1/hosts", json={"hostname": "pg-1.example.com", "tags": {"role": "db"}}, headers=admin
    ).get_json()
    assert created["status"] == "created"
    r = client.patch(f"/api/v1/hosts/{created['id']}", json={"tags": {"role": "db", "zone": "eu"}}, headers=admin)
    assert r.status_code == 200 and r.get_json()["tags"] == {"role": "db", "zone": "eu"}
    listed = client.get("/api/v1/hosts?tags=zone:eu", headers=admin).get_json()
    assert [h["hostname"] for h in listed["hosts"]] == ["pg-1.example.com"]
    with app.app_context():  # a round of the status watcher: ?status= reads its record (an outer join)
        assert app.extensions["status_watch"].tick()
    crit = {h["id"]: h for h in client.get("/api/v1/hosts?status=crit", headers=admin).get_json()["hosts"]}
    assert crit[created["id"]]["status_reasons"] == ["crit: never seen"]
    assert client.get("/api/v1/hosts?status=ok&tags=zone:eu", headers=admin).get_json()["total"] == 0

    viewer = bearer(login(client, VIEWER)["access_token"])
    assert client.delete(f"/api/v1/hosts/{created['id']}", headers=viewer).status_code == 403
    bad = client.post("/api/v1/alerts/rules", json={"name": "x", "expression": "cpu.nope > 1"}, headers=admin)
    assert bad.status_code == 400 and "unknown metric" in bad.get_json()["error"]["message"]

    # Logout revokes at once; the audit log has the admin's changes.
    assert client.post("/api/v1/auth/logout", headers=viewer).status_code == 200
    assert client.get("/api/v1/hosts", headers=viewer).status_code == 401
    actions = {e["action"] for e in client.get("/api/v1/audit?limit=100", headers=admin).get_json()["events"]}
    assert {"login", "user_create", "host_create", "host_update"} <= actions


def test_the_61st_read_is_refused_on_postgres(postgres, tmp_path):
    app = make_app(tmp_path, "http://127.0.0.1:1", SQLALCHEMY_DATABASE_URI=postgres.new_database())
    client = app.test_client()
    admin = bearer(login(client, ADMIN)["access_token"])
    statuses = [client.get("/api/v1/users", headers=admin).status_code for _ in range(61)]
    assert statuses[:60] == [200] * 60
    assert statuses[60] == 429
