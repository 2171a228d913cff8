"""The gateway's schema: migrations agree with the models, and older DBs are brought up to date on start."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleetwatch.testing.api import ADMIN, login, make_app
from gateway.db import db
from gateway.schema_migrations import alembic_config, migrate


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
        # Today's models, less the columns later migrations add to these tables
        c.execute(sa.text("ALTER TABLE login_sessions DROP COLUMN refresh_id"))  # 0010
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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_revision_0003_carries_pushing_hosts_and_the_starter_rules_flag_over_and_back(backend, tmp_path, request):
    url = (
        f"sqlite:///{tmp_path / 'at-0002.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    engine = sa.create_engine(url)
    hosts = sa.table(
        "hosts",
        *(sa.column(name) for name in ("id", "hostname", "exporter")),
        sa.column("ips", sa.JSON),
        sa.column("tags", sa.JSON),
        sa.column("has_gpu", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    row = {"ips": [], "tags": {}, "has_gpu": False, "created_at": datetime.now(UTC)}
    with engine.begin() as c:
        command.upgrade(alembic_config(c), "0002")
        c.execute(
            hosts.insert(),
            [
                {**row, "id": "host-pushed", "hostname": "gpu-1", "exporter": "push"},
                {**row, "id": "host-scraped", "hostname": "web-1", "exporter": "10.0.0.1:9101"},
            ],
        )
        c.execute(sa.text("INSERT INTO secrets (name, value) VALUES ('starter-rules', 'installed')"))

    migrate(engine)
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT id, exporter, pushes FROM hosts ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("host-pushed", None, True), ("host-scraped", "10.0.0.1:9101", False)]
        assert c.execute(sa.text("SELECT name FROM secrets WHERE name = 'starter-rules'")).first() is None
        value = c.execute(sa.select(sa.column("value", sa.JSON)).select_from(sa.table("settings"))).scalar_one()
        assert value == {"installed": True}

    with engine.begin() as c:
        command.downgrade(alembic_config(c), "0002")
    with engine.connect() as c:
        assert "pushes" not in {column["name"] for column in sa.inspect(c).get_columns("hosts")}
        rows = c.execute(sa.text("SELECT id, exporter FROM hosts ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("host-pushed", "push"), ("host-scraped", "10.0.0.1:9101")]
        assert c.execute(sa.text("SELECT value FROM secrets WHERE name = 'starter-rules'")).scalar_one() == "installed"
        assert c.execute(sa.text("SELECT count(*) FROM settings")).scalar_one() == 0
    engine.dispose()
