"""leases.done_at: when a lease's chore last finished; the status record's age

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 12:00:00

The status watcher records every host's status in host_status_seen at each
round; a host list filtered by status reads that record instead of judging
the whole fleet again, as long as the record is recent. ``done_at`` on the
watcher's lease says when its last round judged the fleet.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("done_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("done_at")
