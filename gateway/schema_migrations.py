"""The gateway's schema, created and migrated on start by alembic (``gateway/migrations/``).

A DB made before migrations existed (by ``create_all``) has the tables but no
``alembic_version``: its missing tables are added and it is stamped at the
first revision, then upgraded like any other.

To change the schema: edit ``gateway/db.py``, then
``.venv/bin/python -m gateway.schema_migrations revision "what changed"``
writes the migration, which ``tests/test_schema.py`` checks against the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from gateway.db import db

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST = "0001"
# The tables revision 0001 makes: what a DB from before migrations is completed to before it is stamped.
FIRST_TABLES = (
    "alert_events",
    "alert_rules",
    "api_keys",
    "audit_log",
    "hosts",
    "login_sessions",
    "rate_counters",
    "secrets",
    "users",
)


def alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine) -> None:
    """Bring the DB to the newest revision."""
    with engine.begin() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        config = alembic_config(connection)
        if "users" in tables and "alembic_version" not in tables:
            # The tables of 0001 it lacks; later ones come from their own migrations.
            db.metadata.create_all(connection, tables=[db.metadata.tables[name] for name in FIRST_TABLES])
            command.stamp(config, FIRST)
        command.upgrade(config, "head")


def main(argv: list[str]) -> int:
    """``revision MESSAGE``: autogenerate a migration from the models against a DB at head."""
    if len(argv) != 2 or argv[0] != "revision":
        print('usage: python -m gateway.schema_migrations revision "what changed"', file=sys.stderr)
        return 2
    engine = sa.create_engine("sqlite://")
    migrate(engine)
    # Numbered, not random: the order of the files is the order of the schema's history.
    rev_id = f"{len(list((MIGRATIONS / 'versions').glob('[0-9]*.py'))) + 1:04d}"
    with engine.begin() as connection:
        command.revision(alembic_config(connection), message=argv[1], autogenerate=True, rev_id=rev_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
