"""hosts.pushes: push vs scrape in a column of its own; the starter-rules flag moves from secrets to settings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:00:00

Until now a pushing host was one whose ``exporter`` held the word "push"
instead of a HOST:PORT, and "the starter rules were installed once" was a row
among the secrets. Existing rows are carried over both ways.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PUSH = "push"  # what hosts.exporter held for a pushing host before this revision
STARTER_RULES = "starter-rules"

hosts = sa.table("hosts", sa.column("exporter", sa.String), sa.column("pushes", sa.Boolean))
secrets = sa.table("secrets", sa.column("name", sa.String), sa.column("value", sa.String))
settings = sa.table(
    "settings",
    sa.column("name", sa.String),
    sa.column("value", sa.JSON),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("updated_by", sa.String),
)


def upgrade() -> None:
    # A DB adopted from before migrations may have had its hosts table made from newer models
    # (gateway/schema_migrations.py completes it with create_all): it has the column already.
    if "pushes" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("hosts")}:
        with op.batch_alter_table("hosts") as batch_op:
            batch_op.add_column(sa.Column("pushes", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute(hosts.update().where(hosts.c.exporter == PUSH).values(pushes=True, exporter=None))

    installed = op.get_bind().execute(sa.select(secrets.c.name).where(secrets.c.name == STARTER_RULES)).first()
    if installed is not None:
        op.bulk_insert(
            settings,
            [
                {
                    "name": STARTER_RULES,
                    "value": {"installed": True},
                    "updated_at": datetime.now(UTC),
                    "updated_by": None,
                }
            ],
        )
        op.execute(secrets.delete().where(secrets.c.name == STARTER_RULES))


def downgrade() -> None:
    installed = op.get_bind().execute(sa.select(settings.c.name).where(settings.c.name == STARTER_RULES)).first()
    if installed is not None:
        op.bulk_insert(secrets, [{"name": STARTER_RULES, "value": "installed"}])
        op.execute(settings.delete().where(settings.c.name == STARTER_RULES))

    op.execute(hosts.update().where(hosts.c.pushes == sa.true()).values(exporter=PUSH))
    with op.batch_alter_table("hosts") as batch_op:
        batch_op.drop_column("pushes")
