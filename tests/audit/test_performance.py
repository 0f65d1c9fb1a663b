"""Audit queries use indexes; how long the summary of a 10,000-task workflow takes.

The index test runs everywhere (SQLite's query plans, small data). The measurement is
marked slow and runs only with FLOWD_PERF=1: `FLOWD_PERF=1 pytest -s tests/audit/test_performance.py`.
It prints the time and checks the summary's totals; a timing is never asserted (a shared
machine would make it flaky): the query plans are what the other test holds fixed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.clock import after, utcnow
from flowd.manager import TaskManager
from flowd.model import AttemptOutcome, NewTask, TaskId
from flowd.store import attempts as attempt_store
from flowd.store import events as event_store
from flowd.store import tasks as task_store


def build_workflow(m: TaskManager, children: int, per_stage: int = 1000) -> TaskId:
    """A root with `children` children (and one grandchild per stage), attempts and events, in bulk."""
    t0 = after(utcnow(), -3600)
    with m.db.write() as conn:
        (root,) = task_store.insert_tasks(conn, [NewTask("root", {})], t0)
        kids: list[TaskId] = []
        for first in range(0, children, per_stage):
            stage = first // per_stage
            news = [
                NewTask("child", {"i": i}, parent_id=root, root_id=root, parent_stage=stage)
                for i in range(first, min(children, first + per_stage))
            ]
            kids += task_store.insert_tasks(conn, news, after(t0, stage))
        records = task_store.get_many(conn, [root, *kids])
        for n, rec in enumerate(records):
            start = after(t0, 1 + (n % 500) * 0.01)
            tries = 2 if n % 10 == 0 else 1
            for a in range(1, tries + 1):
                ran = replace(rec, attempt=a, worker_id=f"w{n % 4}", started_at=start)
                end = after(start, 0.05 + (n % 7) * 0.01)
                outcome = AttemptOutcome.FAILED if a < tries else AttemptOutcome.COMPLETED
                attempt_store.close_attempt(conn, ran, outcome, "boom" if a < tries else None, end)
                start = end
        rows = [
            {
                "task_id": rec.id,
                "root_id": root,
                "parent_id": rec.parent_id,
                "event_type": kind,
                "worker_id": "w0",
                "attempt": 1,
                "stage": 0,
                "from_status": "running",
                "to_status": to,
                "message": None,
                "metadata": {"code": "step_done"} if kind == "task_checkpoint" else None,
            }
            for rec in records
            for kind, to in (
                ("task_started", "running"),
                ("task_checkpoint", "running"),
                ("task_completed", "completed"),
            )
        ]
        event_store.insert_event_rows(conn, rows, after(t0, 5))
        conn.execute(sa.text("UPDATE flowd_tasks SET status = 'completed'"))
    return root


@pytest.fixture
def small(sqlite_url: str, make_manager: Any) -> Iterator[tuple[TaskManager, TaskId]]:
    m: TaskManager = make_manager(sqlite_url)
    yield m, build_workflow(m, 30, per_stage=10)


def test_audit_queries__every_read_of_an_audit_table_searches_an_index(small: tuple[TaskManager, TaskId]) -> None:
    m, root = small
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "flowd_" in statement:
            statements.append((statement, params))

    sa.event.listen(m.db.engine, "before_cursor_execute", capture)
    try:
        m.workflow_summary(root)
        m.workflow_audit(root)
        m.task_audit(root + 5)
        m.task_audit(root + 5, event_types=["task_checkpoint"], attempt=1)
    finally:
        sa.event.remove(m.db.engine, "before_cursor_execute", capture)
    assert len(statements) >= 8
    with m.db.read() as conn:
        for sql, params in statements:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
            for table in ("flowd_tasks", "flowd_task_events", "flowd_task_attempts"):
                assert f"SCAN {table}" not in plan.replace(" AS ", " "), f"full scan: {plan}\n{sql}"
            assert "SEARCH" in plan, f"{plan}\n{sql}"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FLOWD_PERF"), reason="measurement: set FLOWD_PERF=1 to run")
def test_summary_of_10000_tasks__measured(sqlite_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(sqlite_url)
    t = time.perf_counter()
    root = build_workflow(m, 10_000)
    built = time.perf_counter() - t
    m.workflow_summary(root)  # warm the connection and page cache, as a second command would find them
    times = []
    for _ in range(3):
        t = time.perf_counter()
        doc = m.workflow_summary(root)
        times.append(time.perf_counter() - t)
    assert doc["totals"]["tasks"] == 10_001 and doc["totals"]["attempts"] == 11_002
    assert doc["totals"]["events"] == 10_001 * 5 and doc["totals"]["checkpoints"] == 10_001
    print(f"\nbuilt in {built:.1f}s; workflow_summary of 10,001 tasks: best {min(times):.3f}s, worst {max(times):.3f}s")
