"""Alembic environment: flowd runs migrations programmatically on a given connection."""

from __future__ import annotations

from alembic import context

from flowd.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    raise RuntimeError("flowd migrations run through `flowd db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    version_table="flowd_alembic_version",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
