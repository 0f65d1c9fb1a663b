"""Paged audit queries on every backend: each filter of events, attempts and tasks, and page edges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import AttemptOutcome, NewTask, TaskId, TaskType
from flowd.store import attempts as attempt_store
from flowd.store import events as event_store
from flowd.store import tasks as task_store
from flowd.store.attempts import AttemptFilter
from flowd.store.db import Database
from flowd.store.events import EventFilter
from flowd.store.schema import tasks as T
from flowd.store.tasks import TaskFilter

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    d = Database(db_url)
    yield d
    d.dispose()


def seed(db: Database) -> dict[str, Any]:
    """A root (1) with children a, b and an unrelated cron task, events and attempts at known times."""
    with db.write() as conn:
        (root,) = task_store.insert_tasks(conn, [NewTask("flow", {}, tag="t1", labels={"env": "prod"})], at(0))
        a, b = task_store.insert_tasks(
            conn,
            [
                NewTask("step", {}, parent_id=root, root_id=root, parent_stage=0, labels={"env": '100%_x"y'}),
                NewTask("step", {}, parent_id=root, root_id=root, parent_stage=0, tag="t2"),
            ],
            at(1),
        )
        (cron,) = task_store.insert_tasks(conn, [NewTask("tick", {}, type=TaskType.CRON, cron_expr="* * * * *")], at(2))
        rows = []
        # task a: attempt 1 fails on w1 at stage 0, attempt 2 completes on w2
        for i, (tid, typ, worker, attempt, stage) in enumerate(
            [
                (a, "task_started", "w1", 1, 0),
                (a, "task_checkpoint", "w1", 1, 0),
                (a, "task_failed", "w1", 1, 0),
                (a, "task_started", "w2", 2, 0),
                (a, "task_progress", "w2", 2, 0),
                (a, "task_completed", "w2", 2, 0),
                (root, "task_resumed", None, 1, 1),
            ]
        ):
            rows.append(
                {
                    "task_id": tid,
                    "root_id": root,
                    "parent_id": root if tid != root else None,
                    "event_type": typ,
                    "worker_id": worker,
                    "attempt": attempt,
                    "stage": stage,
                    "from_status": "running",
                    "to_status": "running",
                    "message": typ,
                    "metadata": {"i": i},
                }
            )
        for i, r in enumerate(rows):
            event_store.insert_event_rows(conn, [r], at(10 + i))
        ta = task_store.get(conn, a)
        tb = task_store.get(conn, b)
        assert ta is not None and tb is not None
        # ended attempts are rows; the attempt in progress lives on its running task's row
        first = replace(ta, attempt=1, worker_id="w1", started_at=at(10))
        attempt_store.close_attempt(conn, first, AttemptOutcome.FAILED, "boom", at(12))
        second = replace(ta, attempt=2, worker_id="w2", started_at=at(13))
        attempt_store.close_attempt(conn, second, AttemptOutcome.COMPLETED, None, at(15))
        conn.execute(  # b: attempt 1 still running on w1
            sa.update(T)
            .where(T.c.id == tb.id)
            .values(status="running", attempt=1, worker_id="w1", stage=0, started_at=at(14), handler_version="v1")
        )
    return {"root": root, "a": a, "b": b, "cron": cron}


def events(db: Database, limit: int = 100, offset: int = 0, order: str = "asc", **f: Any) -> list[int]:
    with db.read() as conn:
        page = event_store.query(conn, EventFilter(**f), limit, offset, order)
    return [e.metadata["i"] if e.metadata and "i" in e.metadata else -e.task_id for e in page.items]


def test_event_filters__each_narrows_by_its_column(db: Database) -> None:
    ids = seed(db)
    assert events(db, task_id=ids["a"]) == [-ids["a"], 0, 1, 2, 3, 4, 5]  # task_created first
    assert events(db, root_id=ids["root"], event_types=["task_failed", "task_resumed"]) == [2, 6]
    assert events(db, event_types=["task_checkpoint"]) == [1]
    assert events(db, worker_id="w2") == [3, 4, 5]
    assert events(db, attempt=2) == [3, 4, 5]
    assert events(db, stage=1) == [6]
    assert events(db, since=at(12), until=at(14)) == [2, 3, 4]  # both ends inclusive
    assert events(db, task_name="tick") == [-ids["cron"]]
    with db.read() as conn:
        third = event_store.query(conn, EventFilter(task_id=ids["a"]), 3, 0, "asc").items[-1].id
    assert events(db, task_id=ids["a"], after_id=third) == [2, 3, 4, 5]
    assert events(db, worker_id="nobody") == []


def test_event_pages__order_limit_offset_has_more(db: Database) -> None:
    ids = seed(db)
    f = EventFilter(task_id=ids["a"], event_types=["task_started", "task_failed", "task_completed", "task_progress"])
    with db.read() as conn:
        first = event_store.query(conn, f, 2, 0, "asc")
        middle = event_store.query(conn, f, 2, 2, "asc")
        last = event_store.query(conn, f, 2, 4, "asc")
        beyond = event_store.query(conn, f, 2, 10, "asc")
        newest = event_store.query(conn, f, 1, 0, "desc")
    assert [e.event_type for e in first.items] == ["task_started", "task_failed"]
    assert (first.total, first.limit, first.offset, first.has_more) == (5, 2, 0, True)
    assert [e.event_type for e in middle.items] == ["task_started", "task_progress"] and middle.has_more
    assert [e.event_type for e in last.items] == ["task_completed"] and not last.has_more
    assert beyond.items == [] and beyond.total == 5 and not beyond.has_more
    assert [e.event_type for e in newest.items] == ["task_completed"] and newest.has_more


def attempts(db: Database, order: str = "asc", **f: Any) -> list[tuple[int, int]]:
    with db.read() as conn:
        page = attempt_store.query(conn, AttemptFilter(**f), 100, 0, order)
    return [(int(a.task_id), a.attempt) for a in page.items]


def test_attempt_filters__each_narrows_by_its_column(db: Database) -> None:
    ids = seed(db)
    a, b = ids["a"], ids["b"]
    assert attempts(db) == [(a, 1), (a, 2), (b, 1)]
    assert attempts(db, order="desc") == [(b, 1), (a, 2), (a, 1)]
    assert attempts(db, task_id=b) == [(b, 1)]
    assert attempts(db, task_ids=[a]) == [(a, 1), (a, 2)]
    assert attempts(db, attempt=2) == [(a, 2)]
    assert attempts(db, worker_id="w1") == [(a, 1), (b, 1)]
    assert attempts(db, outcome="failed") == [(a, 1)]
    assert attempts(db, started_since=at(13)) == [(a, 2), (b, 1)]
    assert attempts(db, started_until=at(13)) == [(a, 1), (a, 2)]
    assert attempts(db, ended_since=at(13)) == [(a, 2)]  # an open attempt has not ended
    assert attempts(db, ended_until=at(12)) == [(a, 1)]
    assert attempts(db, open_only=True) == [(b, 1)]
    with db.read() as conn:
        (running,) = attempt_store.query(conn, AttemptFilter(task_id=b), 10, 0).items
        ended = attempt_store.query(conn, AttemptFilter(task_id=a), 10, 0).items
    # the attempt in progress, read from its task row: no row id, not ended, its version
    assert (running.id, running.worker_id, running.started_at, running.ended_at, running.outcome) == (
        None,
        "w1",
        at(14),
        None,
        None,
    )
    assert running.handler_version == "v1" and all(x.id is not None for x in ended)
    assert [(x.started_at, x.ended_at, x.outcome, x.error) for x in ended] == [
        (at(10), at(12), AttemptOutcome.FAILED, "boom"),
        (at(13), at(15), AttemptOutcome.COMPLETED, None),
    ]
    with db.read() as conn:
        page = attempt_store.query(conn, AttemptFilter(), 2, 1, "asc")
    assert [(int(x.task_id), x.attempt) for x in page.items] == [(a, 2), (b, 1)] and not page.has_more


def tasks(db: Database, **f: Any) -> list[TaskId]:
    with db.read() as conn:
        return [t.id for t in task_store.query(conn, TaskFilter(**f), 100, 0, "asc").items]


def test_task_filters__each_narrows_by_its_column(db: Database) -> None:
    ids = seed(db)
    root, a, b, cron = ids["root"], ids["a"], ids["b"], ids["cron"]
    assert tasks(db) == [root, a, b, cron]
    assert tasks(db, name="step") == [a, b]
    assert tasks(db, status=["pending"]) == [root, a, cron]
    assert tasks(db, status=["completed", "running"]) == [b]
    assert tasks(db, type="cron") == [cron]
    assert tasks(db, tag="t2") == [b]
    assert tasks(db, labels={"env": "prod"}) == [root]
    assert tasks(db, labels={"env": '100%_x"y'}) == [a]  # LIKE wildcards and quotes match literally
    assert tasks(db, labels={"env": "100"}) == []
    assert tasks(db, parent_id=root) == [a, b]
    assert tasks(db, root_id=root) == [root, a, b]
    assert tasks(db, ids=[b, cron]) == [b, cron]
    assert tasks(db, worker_id="w1") == [b]
    with db.read() as conn:
        newest = task_store.query(conn, TaskFilter(), 3, 0)
        rest = task_store.query(conn, TaskFilter(), 3, 3)
    assert [t.id for t in newest.items] == [cron, b, a] and newest.has_more
    assert [t.id for t in rest.items] == [root] and not rest.has_more and rest.total == 4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, t: m.query_tasks(limit=0), "limit must be positive"),
        (lambda m, t: m.query_tasks(offset=-1), "offset must be >= 0"),
        (lambda m, t: m.query_tasks(order="sideways"), "order must be asc or desc"),
        (lambda m, t: m.query_tasks(status="done"), "unknown status"),
        (lambda m, t: m.task_audit(t, limit=-5), "limit must be positive"),
        (lambda m, t: m.task_audit(t, order="up"), "order must be asc or desc"),
        (lambda m, t: m.task_audit(t, event_types=["task_exploded"]), "unknown event type"),
        (lambda m, t: m.task_audit(t, attempt=0), "attempt numbers start at 1"),
        (lambda m, t: m.task_audit(t, stage=-1), "stage must be >= 0"),
        (lambda m, t: m.task_audit(t, since=at(5), until=at(1)), "since is after until"),
        (lambda m, t: m.workflow_audit(t, limit=0), "limit must be positive"),
        (lambda m, t: m.events(limit=0), "limit must be positive"),
    ],
)
def test_bad_query_values__refused_with_bad_input(sqlite_url: str, make_manager: Any, call: Any, message: str) -> None:
    m: TaskManager = make_manager(sqlite_url)
    seed(m.db)
    with pytest.raises(BadInput, match=message):
        call(m, 1)


def test_task_audit__filters_events_and_attempts_and_pages_events(sqlite_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(sqlite_url)
    ids = seed(m.db)
    doc = m.task_audit(ids["a"], attempt=2)
    assert [e["event_type"] for e in doc["events"]["items"]] == ["task_started", "task_progress", "task_completed"]
    assert [x["attempt"] for x in doc["attempts"]["items"]] == [2]
    doc = m.task_audit(ids["a"], worker_id="w1", limit=2, offset=1, order="desc")
    assert [e["event_type"] for e in doc["events"]["items"]] == ["task_checkpoint", "task_started"]
    assert {k: doc["events"][k] for k in ("total", "limit", "offset", "has_more")} == {
        "total": 3,
        "limit": 2,
        "offset": 1,
        "has_more": False,
    }
    assert [x["attempt"] for x in doc["attempts"]["items"]] == [1]
    doc = m.task_audit(ids["a"], event_types=["task_checkpoint", "task_failed"], since=at(11), until=at(11))
    assert [e["event_type"] for e in doc["events"]["items"]] == ["task_checkpoint"]
