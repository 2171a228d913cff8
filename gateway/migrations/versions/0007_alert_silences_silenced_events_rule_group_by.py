"""alert silences (maintenance windows), the silence that muted an event, a rule's notification grouping

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    op.create_table(
        "alert_silences",
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recurring", sa.JSON(), nullable=True),
        sa.Column("comment", sa.String(length=500), nullable=False),
        sa.Column("author", sa.String(length=254), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("am_silences", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("alert_silences") as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_silences_ends_at"), ["ends_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_silences_id"), ["id"], unique=True)
    # A DB adopted from before migrations had these tables made from newer models
    # (gateway/schema_migrations.py): it may have the columns already.
    if "silenced_by" not in _columns("alert_events"):
        with op.batch_alter_table("alert_events") as batch_op:
            batch_op.add_column(sa.Column("silenced_by", sa.String(length=64), nullable=True))
    if "group_by" not in _columns("alert_rules"):
        with op.batch_alter_table("alert_rules") as batch_op:
            batch_op.add_column(sa.Column("group_by", sa.String(length=8), server_default="host", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("alert_rules") as batch_op:
        batch_op.drop_column("group_by")
    with op.batch_alter_table("alert_events") as batch_op:
        batch_op.drop_column("silenced_by")
    with op.batch_alter_table("alert_silences") as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_silences_id"))
        batch_op.drop_index(batch_op.f("ix_alert_silences_ends_at"))
    op.drop_table("alert_silences")
