"""The claim reads the claim index in order: its cost depends on neither history nor backlog."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.clock import utcnow
from flowd.model import NewTask, TaskRecord
from flowd.store import bench as bench_store
from flowd.store import tasks as task_store
from flowd.store.db import Database


def _claim(
    db: Database, conn: sa.Connection, limits: dict[str, int], slots: int, now: datetime
) -> tuple[list[TaskRecord], tuple[str, Any]]:
    """Claim as worker w1; returns the claimed tasks and the claim's UPDATE with its parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    try:
        claimed = task_store.claim_due(conn, "w1", limits, slots, now)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", capture)
    return claimed, next((s, p) for s, p in seen if s.lstrip().upper().startswith("UPDATE"))


def test_claim__sqlite_plan_walks_the_claim_index_without_a_sort(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    now = utcnow()
    with db.write() as conn:
        task_store.insert_tasks(conn, [NewTask(name="a", payload={}) for _ in range(20)], now)
    with db.write() as conn:
        claimed, (stmt, params) = _claim(db, conn, {"a": 5, "b": 5}, 5, now)
    assert len(claimed) == 5
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
    with db.write() as conn:
        claimed, (stmt, params) = _claim(db, conn, {"a": 5}, 5, now)
    assert len(claimed) == 5
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
    with db.write() as conn:
        claimed, (stmt, params) = _claim(db, conn, {"a": 100}, 100, now)
        # in the claim's own transaction: the plan it ran with
        plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + stmt, params).all())
    db.dispose()
    assert len(claimed) == 100
    assert "ix_flowd_tasks_claim" in plan, plan
    assert "Sort" not in plan, plan
