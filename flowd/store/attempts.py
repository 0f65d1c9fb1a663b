"""Attempt rows: one per execution round, opened at claim and closed exactly once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import AttemptOutcome, AttemptRecord, Page, TaskId, TaskRecord
from flowd.store import bulk, paging
from flowd.store.schema import attempts as A


def open_attempts(
    conn: sa.Connection, claimed: Sequence[TaskRecord], now: datetime, versions: Mapping[str, str | None] | None = None
) -> None:
    if claimed:
        rows = [
            {
                "task_id": t.id,
                "attempt": t.attempt,
                "stage": t.stage,
                "worker_id": t.worker_id,
                "handler_version": (versions or {}).get(t.name),
            }
            for t in claimed
        ]
        bulk.insert(conn, A, rows, {"started_at": now})


def close_attempt(
    conn: sa.Connection, task_id: int, attempt: int, outcome: AttemptOutcome, error: str | None, now: datetime
) -> bool:
    """Close the attempt once: a closed attempt is never rewritten."""
    return close_attempts(conn, [close_row(task_id, attempt, outcome, error, now)]) == 1


def close_row(task_id: int, attempt: int, outcome: AttemptOutcome, error: str | None, now: datetime) -> dict[str, Any]:
    """The parameters of one attempt close, for `close_attempts`."""
    return {"c_task": task_id, "c_attempt": attempt, "ended_at": now, "outcome": outcome.value, "error": error}


def close_attempts(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Close many attempts (rows of `close_row`), each only if still open; returns how many closed."""
    if not rows:
        return 0
    return bulk.update(conn, A, rows, match={"c_task": "task_id", "c_attempt": "attempt"}, null=("ended_at",))


def to_record(row: Any) -> AttemptRecord:
    m = row._mapping
    return AttemptRecord(
        id=int(m["id"]),
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


def _where(q: Any, f: AttemptFilter) -> Any:
    if f.task_id is not None:
        q = q.where(A.c.task_id == f.task_id)
    if f.task_ids is not None:
        q = q.where(A.c.task_id.in_(list(f.task_ids)))
    if f.root_id is not None:
        from flowd.store.schema import tasks as T

        # the root index finds the tasks, (task_id, attempt) their attempts
        q = q.where(A.c.task_id.in_(sa.select(T.c.id).where(T.c.root_id == f.root_id)))
    if f.attempt is not None:
        q = q.where(A.c.attempt == f.attempt)
    if f.worker_id:
        q = q.where(A.c.worker_id == f.worker_id)
    if f.outcome:
        q = q.where(A.c.outcome == f.outcome)
    if f.started_since is not None:
        q = q.where(A.c.started_at >= f.started_since)
    if f.started_until is not None:
        q = q.where(A.c.started_at <= f.started_until)
    if f.ended_since is not None:
        q = q.where(A.c.ended_at >= f.ended_since)
    if f.ended_until is not None:
        q = q.where(A.c.ended_at <= f.ended_until)
    if f.open_only:
        q = q.where(A.c.ended_at.is_(None))
    return q


def query(conn: sa.Connection, f: AttemptFilter, limit: int, offset: int, order: str = "asc") -> Page:
    ordering = (A.c.task_id.asc(), A.c.attempt.asc()) if order == "asc" else (A.c.task_id.desc(), A.c.attempt.desc())
    return paging.page(conn, A, lambda q: _where(q, f), ordering, limit, offset, to_record)


def of_root(conn: sa.Connection, root_id: int) -> list[AttemptRecord]:
    """Every attempt of one workflow's tasks: the root index finds the tasks, (task_id, attempt) the rows."""
    from flowd.store.schema import tasks as T

    ids = sa.select(T.c.id).where(T.c.root_id == root_id).scalar_subquery()
    rows = conn.execute(sa.select(A).where(A.c.task_id.in_(ids)).order_by(A.c.task_id, A.c.attempt)).all()
    return [to_record(r) for r in rows]
