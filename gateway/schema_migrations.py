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
            db.metadata.create_all(connection)  # the tables added since, then on as usual
            command.stamp(config, FIRST)
        command.upgrade(config, "head")


def main(argv: list[str]) -> int:
    """``revision MESSAGE``: autogenerate a migration from the models against a DB at head."""
    if len(argv) != 2 or argv[0] != "revision":
        print('usage: python -m gateway.schema_migrations revision "what changed"', file=sys.stderr)
        return 2
    engine = sa.create_engine("sqlite://")
    migrate(engine)
    with engine.begin() as connection:
        command.revision(alembic_config(connection), message=argv[1], autogenerate=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
