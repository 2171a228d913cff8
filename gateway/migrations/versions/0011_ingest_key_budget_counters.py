"""api_keys: hosts_used and series_used, the counts of a key's api_key_hosts and api_key_series rows

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 09:00:00

A key's budget was checked with a count(*) of its rows on every new host or
series: 40-200 ms on PostgreSQL for a relay key with 400,000 series. The
counts are kept on the key's row instead, raised in the transaction that
inserts the rows (gateway/key_scope.py), and filled here from the rows.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COUNTS = {"hosts_used": "api_key_hosts", "series_used": "api_key_series"}


def upgrade() -> None:
    # A DB adopted from before migrations may have api_keys made from newer models (see 0009).
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("api_keys")}
    missing = [name for name in COUNTS if name not in have]
    if missing:
        with op.batch_alter_table("api_keys") as batch_op:
            for name in missing:
                batch_op.add_column(sa.Column(name, sa.Integer(), server_default="0", nullable=False))
    for name, table in COUNTS.items():
        op.execute(f"UPDATE api_keys SET {name} = (SELECT count(*) FROM {table} WHERE {table}.key_pk = api_keys.pk)")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        for name in COUNTS:
            batch_op.drop_column(name)
