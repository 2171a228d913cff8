"""Alembic's environment for the gateway's schema: run by ``gateway.schema_migrations.migrate`` on start."""

from alembic import context

from gateway.db import db

connection = context.config.attributes["connection"]
# Batch mode: SQLite cannot ALTER most things in place, so alembic rebuilds the table.
context.configure(connection=connection, target_metadata=db.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
