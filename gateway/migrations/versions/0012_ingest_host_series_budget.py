"""host_series and host_series_counts: a host's label budget (INGEST_SERIES_PER_HOST), shared by every worker

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 10:00:00

The distinct series each host has created were a set in each worker's memory:
with N workers or replicas a host could create N times its budget, and a
restart forgot them. They are rows now (gateway/budget_rows.py), counted on
the host's host_series_counts row; they start empty, as every restart did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_series",
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column("series", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("host_id", "series"),
    )
    op.create_table(
        "host_series_counts",
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column("series_used", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("host_id"),
    )


def downgrade() -> None:
    op.drop_table("host_series_counts")
    op.drop_table("host_series")
