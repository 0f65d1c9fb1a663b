"""The migration chain produces exactly the schema the code defines, on every backend."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flowd.store import migrate
from flowd.store.db import Database
from flowd.store.schema import SCHEMA_REVISION, metadata


def test_schema_revision_constant__is_the_alembic_head() -> None:
    assert migrate.head() == SCHEMA_REVISION


def test_upgrade_head__on_empty_database_matches_metadata(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    before, after = db.create_schema()
    assert before is None and after == SCHEMA_REVISION
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [
            d
            for d in compare_metadata(ctx, metadata)
            if not (d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)
        ]
    assert diff == []
    db.dispose()


def test_upgrade__is_idempotent(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    db.create_schema()
    assert db.create_schema() == (SCHEMA_REVISION, SCHEMA_REVISION)
    assert db.schema_version() == (SCHEMA_REVISION, SCHEMA_REVISION)
    with db.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"flowd_tasks", "flowd_task_events", "flowd_task_attempts", "flowd_workers"} <= tables
    db.dispose()
