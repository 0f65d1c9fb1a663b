"""Ids people see are never given twice: not after a delete, not after retention, on any database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flowd.manager import TaskManager
from flowd.store import migrate
from flowd.store.db import Database
from flowd.store.schema import SCHEMA_REVISION, metadata
from tests.engine.conftest import drain

Make = Callable[..., TaskManager]
ID_TABLES = ("flowd_tasks", "flowd_task_events", "flowd_task_attempts", "flowd_flows")


def newest_ids(m: TaskManager) -> tuple[int, int, int]:
    """(highest task id, event id, attempt id) in the database now."""
    with m.db.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {t}")).scalar_one()) for t in ID_TABLES[:3]
        )


def test_ids__never_reused_after_the_newest_tasks_are_deleted(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    m.use("job", lambda t: t.id)
    m.submit("job", {})
    m.submit_many([("job", {}), ("job", {})], tag="newest")
    drain(m)  # events and attempts too
    task, event, attempt = newest_ids(m)
    assert m.delete_tasks(tag="newest") == 2
    assert newest_ids(m)[0] < task, "the newest tasks, their events and attempts are gone"
    one = m.submit("job", {})  # one INSERT
    many = m.submit_many([("job", {}), ("job", {})])  # the bulk path, ids reserved up front
    drain(m)
    assert one > task and min(many) > one
    _, event2, attempt2 = newest_ids(m)
    first_new_event = min(e["id"] for e in m.task_audit(one)["events"]["items"])
    assert first_new_event > event and event2 > event
    assert min(a["id"] for a in m.task_audit(one)["attempts"]["items"]) > attempt and attempt2 > attempt


def test_ids__never_reused_after_retention(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    m.use("job", lambda t: None)
    ids = m.submit_many([("job", {})] * 3)
    drain(m)
    assert m.run_retention({"expire_time": 0})["tasks_deleted"] == 3
    assert m.submit("job", {}) > max(ids)


def test_upgrade_to_0010__sqlite_id_tables_become_autoincrement_keeping_rows_and_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrate.config(conn), "0009")
        for _ in range(5):
            conn.execute(
                sa.text(
                    "INSERT INTO flowd_tasks (name, type, status, max_retries, retry_interval, timeout,"
                    " created_at, updated_at) VALUES ('job', 'async', 'completed', 3, 0, 60, 0, 0)"
                )
            )
        conn.execute(sa.text("INSERT INTO flowd_task_attempts (task_id, attempt, started_at) VALUES (5, 1, 0)"))
        before = {str(r[0]): str(r[1]) for r in conn.execute(sa.text("SELECT name, sql FROM sqlite_master"))}
    engine.dispose()
    assert "AUTOINCREMENT" not in before["flowd_tasks"]
    with engine.begin() as conn:  # 0010 itself (a later migration, 0013, makes task indexes partial)
        command.upgrade(migrate.config(conn), "0010")
        after = {str(r[0]): str(r[1]) for r in conn.execute(sa.text("SELECT name, sql FROM sqlite_master"))}
    engine.dispose()
    db = Database(url)
    assert db.create_schema() == ("0010", SCHEMA_REVISION)
    with db.engine.connect() as conn:
        for table in ID_TABLES:
            assert "AUTOINCREMENT" in after[table], table
        # every index is back, word for word (the claim index keeps its DESC); later
        # migrations may add indexes of their own
        assert {k: v for k, v in after.items() if k.startswith("ix_") and k in before} == {
            k: v for k, v in before.items() if k.startswith("ix_")
        }
        assert "priority DESC" in after["ix_flowd_tasks_claim"]
        assert conn.execute(sa.text("SELECT id FROM flowd_tasks ORDER BY id")).scalars().all() == [1, 2, 3, 4, 5]
        seq = {str(r[0]): int(r[1]) for r in conn.execute(sa.text("SELECT name, seq FROM sqlite_sequence"))}
        assert seq["flowd_tasks"] == 5 and seq["flowd_task_attempts"] == 1
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [
            d
            for d in compare_metadata(ctx, metadata)
            if not (d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)
        ]
        assert diff == []
    db.dispose()
    m = TaskManager(db_url=url, handlers_dir=str(tmp_path))
    m.use("job", lambda t: None)
    m.delete_tasks(all=True)
    assert m.submit("job", {}) == 6, "past every id the table ever held"
    m.close()
