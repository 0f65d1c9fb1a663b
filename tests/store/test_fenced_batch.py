"""A batch of ends large enough for PostgreSQL's one-statement path: written whole, or not at all."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from flowd.engine import ops
from flowd.model import NewTask, TaskRecord, TaskStatus
from flowd.store import bulk
from flowd.store import tasks as task_store
from flowd.store.db import Database
from flowd.store.schema import attempts as A
from flowd.store.schema import events as E
from flowd.store.schema import tasks as T
from flowd.store.tasks import Fence

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled

T0 = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
# each kind of end (completed, retried) a group of its own above the one-statement threshold
N = 2 * bulk.COPY_MIN_ROWS + 5


def _claimed(db: Database) -> list[TaskRecord]:
    with db.write() as conn:
        task_store.insert_tasks(conn, [NewTask("n", {"i": i}) for i in range(N)], T0)
    claimed = ops.claim(db, "w1", {"n": N}, N, T0 + timedelta(seconds=1))
    assert len(claimed) == N
    return claimed


def _items(
    claimed: list[TaskRecord], outcome_of: Callable[[TaskRecord], ops.Outcome]
) -> list[tuple[TaskRecord, Fence, ops.Outcome]]:
    return [(t, Fence("w1", t.attempt), outcome_of(t)) for t in claimed]


def test_finish_many__writes_every_end_of_a_large_batch(db_url: str) -> None:
    db = Database(db_url)
    claimed = _claimed(db)
    now = T0 + timedelta(seconds=2)
    items = _items(claimed, lambda t: ops.Success({"i": t.payload["i"]}) if t.id % 2 else ops.Failure("no"))
    assert db.transaction(lambda conn: ops.finish_many(conn, items, now)) == [True] * N
    with db.read() as conn:
        tasks = {t.id: t for t in task_store.get_many(conn, [t.id for t in claimed])}
        closed = conn.execute(sa.select(A.c.task_id, A.c.outcome, A.c.ended_at, A.c.worker_id, A.c.started_at)).all()
        ends = conn.execute(sa.select(E.c.task_id, E.c.event_type).where(E.c.created_at == now)).all()
    for t in claimed:
        got = tasks[t.id]
        if t.id % 2:
            assert (got.status, got.result) == (TaskStatus.COMPLETED, {"i": t.payload["i"]})
        else:  # three attempts by default: a failure is retried
            assert (got.status, got.error) == (TaskStatus.PENDING, "no")
    # each attempt row written once, at the end, with its worker and start from the task row
    assert sorted((r.task_id, r.outcome, r.ended_at, r.worker_id, r.started_at) for r in closed) == sorted(
        (t.id, "completed" if t.id % 2 else "failed", now, "w1", T0 + timedelta(seconds=1)) for t in claimed
    )
    assert len({r.task_id for r in ends}) == N


def test_finish_many__one_fenced_off_attempt_rolls_the_whole_batch_back(db_url: str) -> None:
    db = Database(db_url)
    claimed = _claimed(db)
    with db.write() as conn:  # another worker took one task over (as a recovery would)
        conn.execute(sa.update(T).where(T.c.id == claimed[7].id).values(worker_id="w2"))
    items = _items(claimed, lambda t: ops.Success(None))
    with pytest.raises(ops.StaleBatch):
        db.transaction(lambda conn: ops.finish_many(conn, items, T0 + timedelta(seconds=2)))
    with db.read() as conn:
        statuses = {t.status for t in task_store.get_many(conn, [t.id for t in claimed])}
        attempt_rows = conn.execute(sa.select(sa.func.count()).select_from(A)).scalar_one()
    # every attempt still in progress on its task row; no attempt row was written
    assert statuses == {TaskStatus.RUNNING} and attempt_rows == 0
