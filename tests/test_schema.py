"""The gateway's schema: migrations agree with the models, and older DBs are brought up to date on start."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleetwatch.testing.api import ADMIN, login, make_app
from gateway.db import db
from gateway.schema_migrations import migrate


def test_migrations_build_exactly_the_models_schema(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert diff == [], "the models changed without a migration: python -m gateway.schema_migrations revision '...'"


def test_a_db_made_before_migrations_is_adopted_and_keeps_its_rows(tmp_path):
    # What create_all made before there were migrations: the first tables only, no alembic_version.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gateway-old.db'}")
    old = [t for name, t in db.metadata.tables.items() if name in ("users", "login_sessions", "hosts", "secrets")]
    db.metadata.create_all(engine, tables=old)
    with engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO hosts (id, hostname, ips, tags, has_gpu, created_at) "
                "VALUES ('host-007', 'kept.example.com', '[]', '{}', 0, '2026-01-01 00:00:00')"
            )
        )

    app = make_app(tmp_path, "http://127.0.0.1:1", db_name="old")
    client = app.test_client()
    token = login(client, ADMIN)["access_token"]  # the admin, made on start in the adopted DB
    rules = client.get("/api/v1/alerts/rules", headers={"Authorization": f"Bearer {token}"})
    assert rules.status_code == 200, rules.get_json()  # a table the old DB did not have
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT hostname FROM hosts")).scalars().all() == ["kept.example.com"]
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
