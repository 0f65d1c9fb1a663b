"""The attempt in progress lives on its task row; its attempt row is written once, when it
ends, and only by the worker that still owns it. Reads show both. Existing databases move
their open attempt rows onto the task rows, history kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command

from flowd.engine import ops
from flowd.model import AttemptOutcome, NewTask, TaskStatus
from flowd.store import attempts as attempt_store
from flowd.store import migrate
from flowd.store import tasks as task_store
from flowd.store.attempts import AttemptFilter
from flowd.store.db import Database
from flowd.store.schema import SCHEMA_REVISION
from flowd.store.schema import attempts as A
from flowd.store.schema import tasks as T
from flowd.store.tasks import Fence

T0 = datetime(2026, 12, 4, 8, 0, 0, tzinfo=UTC)


def _rows(db: Database) -> list[tuple[int, int, str | None, str | None]]:
    with db.read() as conn:
        q = sa.select(A.c.task_id, A.c.attempt, A.c.worker_id, A.c.outcome).order_by(A.c.task_id, A.c.attempt)
        return [(int(r[0]), int(r[1]), r[2], r[3]) for r in conn.execute(q).all()]


def test_claim_then_end__one_attempt_row_written_at_the_end(db_url: str) -> None:
    db = Database(db_url)
    with db.write() as conn:
        (tid,) = task_store.insert_tasks(conn, [NewTask("n", {})], T0)
    start = T0 + timedelta(seconds=1)
    (task,) = ops.claim(db, "w1", {"n": 1}, 1, start, {"n": "v7"})
    assert _rows(db) == []  # nothing written for the attempt at its claim
    with db.read() as conn:
        (running,) = attempt_store.query(conn, AttemptFilter(task_id=tid), 10, 0).items
        (in_tree,) = attempt_store.of_root(conn, tid)
    assert running == in_tree
    assert (running.id, running.attempt, running.worker_id, running.started_at) == (None, 1, "w1", start)
    assert (running.ended_at, running.outcome, running.handler_version) == (None, None, "v7")

    end = T0 + timedelta(seconds=3)
    assert ops.finish(db, task, ops.Failure("boom"), end)  # retried: pending again
    assert _rows(db) == [(tid, 1, "w1", "failed")]
    with db.read() as conn:
        (ended,) = attempt_store.query(conn, AttemptFilter(task_id=tid), 10, 0).items
    assert (ended.started_at, ended.ended_at, ended.error, ended.handler_version) == (start, end, "boom", "v7")
    assert ended.id is not None
    db.dispose()


def test_stale_end__writes_no_attempt_row(db_url: str) -> None:
    db = Database(db_url)
    with db.write() as conn:
        task_store.insert_tasks(conn, [NewTask("n", {})], T0)
    (task,) = ops.claim(db, "w1", {"n": 1}, 1, T0)
    with db.write() as conn:  # the attempt was taken over (as a recovery and a new claim would)
        conn.execute(sa.update(T).where(T.c.id == task.id).values(worker_id="w2", attempt=2))
    assert not ops.finish(db, task, ops.Success(1), T0 + timedelta(seconds=1))
    assert not db.transaction(
        lambda conn: ops.finish_in(conn, task, Fence("w1", 1), ops.Success(1), T0 + timedelta(seconds=1))
    )
    assert _rows(db) == []
    with db.read() as conn:
        (open_,) = attempt_store.query(conn, AttemptFilter(task_id=task.id), 10, 0).items
        got = task_store.get(conn, task.id)
    assert got is not None and got.status is TaskStatus.RUNNING
    assert (open_.attempt, open_.worker_id, open_.ended_at) == (2, "w2", None)
    db.dispose()


def test_upgrade_from_0013__moves_open_attempts_onto_their_running_tasks(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    with db.engine.begin() as conn:
        command.upgrade(migrate.config(conn), "0013")
    ms = int(T0.timestamp() * 1000)
    with db.engine.begin() as conn:
        task = {
            "name": "n", "type": "async", "priority": 0, "stage": 0, "retry_count": 1, "max_retries": 3,
            "retry_interval": 0.0, "timeout": 60.0, "created_at": ms, "updated_at": ms, "constrained": False,
        }  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO flowd_tasks (id, name, type, status, priority, stage, retry_count, max_retries, "
                "retry_interval, timeout, created_at, updated_at, constrained, worker_id, attempt, started_at) "
                "VALUES (:id, :name, :type, :status, :priority, :stage, :retry_count, :max_retries, "
                ":retry_interval, :timeout, :created_at, :updated_at, :constrained, :w, :attempt, :started)"
            ),
            [
                {**task, "id": 1, "status": "running", "w": "w1", "attempt": 2, "started": ms + 2000},
                {**task, "id": 2, "status": "pending", "w": None, "attempt": 1, "started": ms},
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO flowd_task_attempts (task_id, attempt, stage, worker_id, started_at, ended_at, "
                "outcome, error, handler_version) VALUES (:t, :a, 0, :w, :s, :e, :o, :err, :v)"
            ),
            [
                {"t": 1, "a": 1, "w": "w0", "s": ms, "e": ms + 1000, "o": "failed", "err": "x", "v": "v1"},
                {"t": 1, "a": 2, "w": "w1", "s": ms + 2000, "e": None, "o": None, "err": None, "v": "v2"},
                # an open row whose task is not running that attempt: history, kept as it is
                {"t": 2, "a": 1, "w": "w9", "s": ms, "e": None, "o": None, "err": None, "v": "v1"},
            ],
        )
    assert db.create_schema() == ("0013", SCHEMA_REVISION)
    assert _rows(db) == [(1, 1, "w0", "failed"), (2, 1, "w9", None)]
    with db.read() as conn:
        one = attempt_store.query(conn, AttemptFilter(task_id=1), 10, 0).items
        two = attempt_store.query(conn, AttemptFilter(task_id=2), 10, 0).items
    assert [(a.attempt, a.worker_id, a.outcome, a.handler_version, a.ended_at is None) for a in one] == [
        (1, "w0", AttemptOutcome.FAILED, "v1", False),
        (2, "w1", None, "v2", True),  # in progress, from the task row
    ]
    assert [(a.attempt, a.worker_id, a.ended_at) for a in two] == [(1, "w9", None)]
    db.dispose()
