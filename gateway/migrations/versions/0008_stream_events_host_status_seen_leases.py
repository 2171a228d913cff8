"""stream_events (the live-update log), host_status_seen, leases

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:20:42

The log of host status changes and alert events that /api/v1/stream serves
(gateway/event_log.py), each host's last recorded status, and the leases that
let one worker among all replicas watch statuses.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_status_seen",
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("host_id"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "stream_events",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("admin_extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("stream_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_events_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_events_at"))

    op.drop_table("stream_events")
    op.drop_table("leases")
    op.drop_table("host_status_seen")
