"""hosts.source: how a host came into the inventory (api, push, import, local)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:10:00

Hosts made before this revision came by the API or by their agent's first push;
the ``pushes`` column tells which.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

hosts = sa.table("hosts", sa.column("source", sa.String), sa.column("pushes", sa.Boolean))


def upgrade() -> None:
    # A DB adopted from before migrations may have had its hosts table made from newer models.
    if "source" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("hosts")}:
        with op.batch_alter_table("hosts") as batch_op:
            batch_op.add_column(sa.Column("source", sa.String(16), server_default="api", nullable=False))
    op.execute(hosts.update().where(hosts.c.pushes == sa.true()).values(source="push"))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch_op:
        batch_op.drop_column("source")
