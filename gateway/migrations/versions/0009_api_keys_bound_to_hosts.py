"""api_keys bound to hosts (host_pattern, allow_discovery, budgets); api_key_hosts, api_key_series

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:30:00

A key made before keys were bound spoke for every host and added the hosts it
pushed for: it becomes a fleet-wide relay key (``*``) that allows discovery,
so no agent breaks. Admins narrow such keys by making bound ones and revoking
the old (docs/security-ingest.md).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = [
        sa.Column("host_pattern", sa.String(length=64), server_default="*", nullable=False),
        sa.Column("allow_discovery", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("max_hosts", sa.Integer(), nullable=True),
        sa.Column("max_series", sa.Integer(), nullable=True),
    ]
    # A DB adopted from before migrations may have had api_keys made from newer models
    # (gateway/schema_migrations.py completes it with create_all): it has the columns already.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("api_keys")}
    missing = [c for c in columns if c.name not in have]
    if missing:
        with op.batch_alter_table("api_keys") as batch_op:
            for column in missing:
                batch_op.add_column(column)
    op.create_table(
        "api_key_hosts",
        sa.Column("key_pk", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("key_pk", "host_id"),
    )
    op.create_table(
        "api_key_series",
        sa.Column("key_pk", sa.Integer(), nullable=False),
        sa.Column("series", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("key_pk", "series"),
    )


def downgrade() -> None:
    op.drop_table("api_key_series")
    op.drop_table("api_key_hosts")
    with op.batch_alter_table("api_keys") as batch_op:
        for column in ("max_series", "max_hosts", "allow_discovery", "host_pattern"):
            batch_op.drop_column(column)
