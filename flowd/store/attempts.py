"""Attempts: one per execution round. The attempt in progress lives on its task row (status
running: worker_id, attempt, stage, started_at, handler_version); its attempt row is written
once, when it ends. Reads see both: the rows, and each running task's attempt in progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from flowd.model import AttemptOutcome, AttemptRecord, Page, TaskId, TaskRecord
from flowd.store import bulk, paging
from flowd.store.schema import attempts as A
from flowd.store.schema import is_running
from flowd.store.schema import tasks as T


def close_row(task: TaskRecord, outcome: AttemptOutcome, error: str | None, now: datetime) -> dict[str, Any]:
    """The attempt row of `task`'s running attempt, ended `now` (for `close_attempts`).

    The attempt in progress lives on the task row (worker_id, attempt, stage, started_at,
    handler_version), so an attempt row is written once, when it ends, after the fenced
    update of the task row matched: a stale writer never gets here, and the unique
    (task_id, attempt) key refuses a second close.
    """
    return {
        "task_id": task.id,
        "attempt": task.attempt,
        "stage": task.stage,
        "worker_id": task.worker_id,
        "started_at": task.started_at or now,
        "ended_at": now,
        "outcome": outcome.value,
        "error": error,
        "handler_version": task.handler_version,
    }


def close_attempt(
    conn: sa.Connection, task: TaskRecord, outcome: AttemptOutcome, error: str | None, now: datetime
) -> None:
    """Write the ended attempt of `task` (see `close_row`)."""
    close_attempts(conn, [close_row(task, outcome, error, now)])


def close_attempts(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write many ended attempts (rows of `close_row`) in one bulk insert."""
    if rows:
        bulk.insert(conn, A, rows)


def to_record(row: Any) -> AttemptRecord:
    m = row._mapping
    return AttemptRecord(
        id=int(m["id"]) if m["id"] is not None else None,
        task_id=TaskId(int(m["task_id"])),
        attempt=int(m["attempt"]),
        worker_id=m["worker_id"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        outcome=AttemptOutcome(m["outcome"]) if m["outcome"] else None,
        error=m["error"],
        stage=int(m["stage"]),
        handler_version=m["handler_version"],
    )


@dataclass(frozen=True, slots=True)
class AttemptFilter:
    task_id: int | None = None
    task_ids: Sequence[int] | None = None
    root_id: int | None = None  # every attempt of one workflow's tasks
    attempt: int | None = None
    worker_id: str | None = None
    outcome: str | None = None
    started_since: datetime | None = None
    started_until: datetime | None = None
    ended_since: datetime | None = None
    ended_until: datetime | None = None
    open_only: bool = False


# the attempt in progress of each running task, shaped as an attempt row (not ended: no id yet)
_OPEN = sa.select(
    sa.cast(sa.null(), A.c.id.type).label("id"),
    T.c.id.label("task_id"),
    T.c.attempt.label("attempt"),
    T.c.stage.label("stage"),
    T.c.worker_id.label("worker_id"),
    T.c.started_at.label("started_at"),
    sa.cast(sa.null(), A.c.ended_at.type).label("ended_at"),
    sa.cast(sa.null(), A.c.outcome.type).label("outcome"),
    sa.cast(sa.null(), A.c.error.type).label("error"),
    T.c.handler_version.label("handler_version"),
).where(is_running(T.c.status))
_OPEN_COLUMNS = SimpleNamespace(task_id=T.c.id, attempt=T.c.attempt, worker_id=T.c.worker_id, started_at=T.c.started_at)
_ENDED = sa.select(*(A.c[c.name] for c in _OPEN.selected_columns))


def _where(q: Any, f: AttemptFilter, c: Any) -> Any:
    """The filters of `f` on one branch; `c` names that branch's columns."""
    if f.task_id is not None:
        q = q.where(c.task_id == f.task_id)
    if f.task_ids is not None:
        q = q.where(c.task_id.in_(list(f.task_ids)))
    if f.root_id is not None:
        # the root index finds the tasks, (task_id, attempt) their attempts; never correlated
        # with the running-attempt branch, which reads the tasks table itself
        q = q.where(c.task_id.in_(sa.select(T.c.id).where(T.c.root_id == f.root_id).correlate(None)))
    if f.attempt is not None:
        q = q.where(c.attempt == f.attempt)
    if f.worker_id:
        q = q.where(c.worker_id == f.worker_id)
    if f.outcome:
        q = q.where(c.outcome == f.outcome)
    if f.started_since is not None:
        q = q.where(c.started_at >= f.started_since)
    if f.started_until is not None:
        q = q.where(c.started_at <= f.started_until)
    if f.ended_since is not None:
        q = q.where(c.ended_at >= f.ended_since)
    if f.ended_until is not None:
        q = q.where(c.ended_at <= f.ended_until)
    return q


def _matching(f: AttemptFilter) -> sa.Subquery:
    """The attempts `f` selects: the ended rows and the attempts in progress, each branch
    filtered on its own indexes (task id: the primary key of either table)."""
    branches = []
    if not f.open_only:
        branches.append(_where(_ENDED, f, A.c))
    if not (f.outcome or f.ended_since is not None or f.ended_until is not None):
        branches.append(_where(_OPEN, f, _OPEN_COLUMNS))
    return sa.union_all(*branches).subquery("attempts")


def query(conn: sa.Connection, f: AttemptFilter, limit: int, offset: int, order: str = "asc") -> Page:
    sub = _matching(f)
    ordering = (
        (sub.c.task_id.asc(), sub.c.attempt.asc()) if order == "asc" else (sub.c.task_id.desc(), sub.c.attempt.desc())
    )
    return paging.page(conn, sub, lambda q: q, ordering, limit, offset, to_record)


def of_root(conn: sa.Connection, root_id: int) -> list[AttemptRecord]:
    """Every attempt of one workflow's tasks: the root index finds the tasks, (task_id, attempt)
    the rows; the running ones of the workflow add their attempts in progress."""
    ids = sa.select(T.c.id).where(T.c.root_id == root_id).scalar_subquery()
    sub = sa.union_all(_ENDED.where(A.c.task_id.in_(ids)), _OPEN.where(T.c.root_id == root_id)).subquery()
    rows = conn.execute(sa.select(sub).order_by(sub.c.task_id, sub.c.attempt)).all()
    return [to_record(r) for r in rows]
