"""The task table's partial indexes (SQLite, PostgreSQL): made by the migration from an
existing database with its rows kept, the same as the schema's own, and used by the queries
they exist for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

from flowd.clock import utcnow
from flowd.model import NewTask, TaskKey
from flowd.store import constraints, migrate
from flowd.store import tasks as task_store
from flowd.store.db import Database
from flowd.store.schema import SCHEMA_REVISION, metadata

PARTIAL = {
    "ix_flowd_tasks_claim": "pending",
    "ix_flowd_tasks_worker": "running",
    "ix_flowd_tasks_parent": "parent_id IS NOT NULL",
    "ix_flowd_tasks_tag": "tag IS NOT NULL",
    "ix_flowd_tasks_key": "key IS NOT NULL",
    "ix_flowd_tasks_flow": "flow_id IS NOT NULL",
    "ix_flowd_tasks_constrained": "constrained",
}


def _index_sql(conn: sa.Connection) -> dict[str, str]:
    """name → the index's definition as the database reports it (flowd_tasks only)."""
    if conn.dialect.name == "sqlite":
        q = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flowd_tasks' AND sql IS NOT NULL"
    elif conn.dialect.name == "postgresql":
        q = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'flowd_tasks'"
    else:
        return {}
    return {str(n): str(d) for n, d in conn.exec_driver_sql(q).all()}


def test_upgrade_from_0011__keeps_the_tasks_and_makes_the_task_indexes_partial(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    now = utcnow()
    with db.engine.begin() as conn:
        command.upgrade(migrate.config(conn), "0011")
    with db.engine.begin() as conn:
        # the 0011 table has the columns of today's but handler_version: the insert fits it
        ids = task_store.insert_tasks(conn, [NewTask(name="a", payload={"n": i}, tag="t") for i in range(3)], now)
    assert db.create_schema() == ("0011", SCHEMA_REVISION)
    with db.engine.connect() as conn:
        kept = task_store.get_many(conn, ids)
        defs = _index_sql(conn)
    assert [t.payload for t in kept] == [{"n": 0}, {"n": 1}, {"n": 2}]
    if db.dialect in ("sqlite", "postgresql"):
        for name, where in PARTIAL.items():
            assert "WHERE" in defs[name] and where in defs[name], (name, defs[name])
        assert "WHERE" not in defs["ix_flowd_tasks_root"]
    db.dispose()


def test_migrated_indexes__equal_the_schema_definition(tmp_path: Path) -> None:
    migrated = Database(f"sqlite:///{tmp_path / 'migrated.db'}")
    migrated.create_schema()
    created = sa.create_engine(f"sqlite:///{tmp_path / 'created.db'}")
    metadata.create_all(created)

    def norm(defs: dict[str, str]) -> dict[str, str]:
        return {k: " ".join(v.replace('"', "").split()) for k, v in defs.items()}

    with migrated.engine.connect() as a, created.connect() as b:
        assert norm(_index_sql(a)) == norm(_index_sql(b))
    migrated.dispose()
    created.dispose()


def test_sqlite_queries__use_the_partial_indexes(tmp_path: Path) -> None:
    """The running tasks of workers, the constraint probe and the due count each search
    their partial index (the SQLite planner needs the index's WHERE term in the query)."""
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    now = utcnow()
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    with db.write() as conn:
        task_store.insert_tasks(
            conn, [NewTask(name="a", payload={}, constraints=(TaskKey("g", "k", 1, 0.0),)) for _ in range(3)], now
        )
    sa.event.listen(db.engine, "before_cursor_execute", capture)
    with db.read() as conn:
        task_store.running_of_workers(conn, ["w1"])
        constraints.any_pending(conn)
        task_store.due_count(conn, now)
    sa.event.remove(db.engine, "before_cursor_execute", capture)
    with db.engine.connect() as conn:
        plans = [
            " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p).all())
            for s, p in captured
        ]
    assert "ix_flowd_tasks_worker" in plans[0], plans[0]
    assert "ix_flowd_tasks_constrained" in plans[1], plans[1]
    assert "ix_flowd_tasks_claim" in plans[2], plans[2]
    db.dispose()
