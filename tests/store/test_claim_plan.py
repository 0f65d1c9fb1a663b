"""The claim reads the claim index in order: its cost depends on neither history nor backlog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.clock import utcnow
from flowd.model import NewTask
from flowd.store import bench as bench_store
from flowd.store import tasks as task_store
from flowd.store.db import Database


def test_claim__sqlite_plan_walks_the_claim_index_without_a_sort(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    now = utcnow()
    with db.write() as conn:
        task_store.insert_tasks(conn, [NewTask(name="a", payload={}) for _ in range(20)], now)
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    with db.write() as conn:
        claimed = task_store.claim_due(conn, "w1", {"a": 5, "b": 5}, 5, now)
    sa.event.remove(db.engine, "before_cursor_execute", capture)
    assert len(claimed) == 5
    (stmt, params) = next((s, p) for s, p in seen if s.lstrip().upper().startswith("UPDATE"))
    with db.engine.connect() as conn:
        plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params).all())
    assert "ix_flowd_tasks_claim" in plan, plan
    # the UPDATE itself finds the chosen rows by primary key, not by scanning the pending set
    assert plan.startswith("SEARCH flowd_tasks USING INTEGER PRIMARY KEY"), plan
    # the index order is the claim's ORDER BY: no sort of every due task
    assert "TEMP B-TREE" not in plan, plan
    db.dispose()


def test_claim__postgres_plan_walks_the_claim_index_past_the_history(db_url: str) -> None:
    """With thousands of completed tasks and fresh statistics, the planner still reads the
    claim index (no sequential scan of the table, no sort of the due rows)."""
    db = Database(db_url)
    if db.dialect != "postgresql":
        db.dispose()
        pytest.skip("the PostgreSQL planner's choice (SQLite has its own test above)")
    now = utcnow()
    with db.write() as conn:
        bench_store.insert_history(conn, 5000, "a", {}, now)
        task_store.insert_tasks(conn, [NewTask(name="a", payload={}) for _ in range(20)], now)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    with db.write() as conn:
        claimed = task_store.claim_due(conn, "w1", {"a": 5}, 5, now)
    sa.event.remove(db.engine, "before_cursor_execute", capture)
    assert len(claimed) == 5
    (stmt, params) = next((s, p) for s, p in seen if s.lstrip().upper().startswith("UPDATE"))
    with db.engine.connect() as conn:
        plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + stmt, params).all())
    db.dispose()
    assert "ix_flowd_tasks_claim" in plan, plan
    assert "Seq Scan on flowd_tasks" not in plan, plan
    assert "Sort" not in plan, plan


def test_claim__postgres_plan_ignores_statistics_that_predate_the_backlog(db_url: str) -> None:
    """Statistics taken on empty tables, then a backlog of thousands: the claim still walks
    the claim index in order instead of sorting every pending task (else O(backlog))."""
    db = Database(db_url)
    if db.dialect != "postgresql":
        db.dispose()
        pytest.skip("the PostgreSQL planner's choice (SQLite has its own test above)")
    db.ensure_schema()
    bench_store.settle(db.engine)  # VACUUM ANALYZE of the empty tables
    now = utcnow()
    with db.write() as conn:
        task_store.insert_tasks(conn, [NewTask(name="a", payload={}) for _ in range(60_000)], now)
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    with db.write() as conn:
        claimed = task_store.claim_due(conn, "w1", {"a": 100}, 100, now)
        sa.event.remove(db.engine, "before_cursor_execute", capture)
        (stmt, params) = next((s, p) for s, p in seen if s.lstrip().upper().startswith("UPDATE"))
        # in the claim's own transaction: the plan it ran with
        plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + stmt, params).all())
    db.dispose()
    assert len(claimed) == 100
    assert "ix_flowd_tasks_claim" in plan, plan
    assert "Sort" not in plan, plan
