"""Audit event rows: written with every transition, read by the audit views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.clock import to_ms
from flowd.model import EventRecord, Page, TaskId, TaskRecord
from flowd.rules.transitions import EventSpec
from flowd.store import bulk, paging
from flowd.store.schema import events as E


def insert_event_rows(conn: sa.Connection, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Insert rows of `event_rows`, all created `now`."""
    bulk.insert(conn, E, rows, {"created_at": now})


def insert_events(
    conn: sa.Connection,
    task: TaskRecord,
    specs: Sequence[EventSpec],
    now: datetime,
    *,
    worker_id: str | None,
    attempt: int | None,
    stage: int | None,
) -> None:
    insert_event_rows(conn, event_rows(task, specs, worker_id=worker_id, attempt=attempt, stage=stage), now)


def event_rows(
    task: TaskRecord,
    specs: Sequence[EventSpec],
    *,
    worker_id: str | None,
    attempt: int | None,
    stage: int | None,
) -> list[dict[str, Any]]:
    """The event rows of `specs` for `task` (for `insert_event_rows`)."""
    return [
        {
            "task_id": task.id,
            "root_id": task.root_id if task.root_id is not None else task.id,
            "parent_id": task.parent_id,
            "event_type": s.type.value,
            "worker_id": worker_id,
            "attempt": attempt,
            "stage": stage,
            "from_status": s.from_status.value if s.from_status else None,
            "to_status": s.to_status.value if s.to_status else None,
            "message": s.message,
            # the spec's own dict when it is one: events sharing it are encoded once (bulk)
            "metadata": s.metadata if s.metadata is None or type(s.metadata) is dict else dict(s.metadata),
        }
        for s in specs
    ]


def to_record(row: Any) -> EventRecord:
    m = row._mapping
    return EventRecord(
        id=int(m["id"]),
        task_id=TaskId(int(m["task_id"])),
        root_id=TaskId(int(m["root_id"])) if m["root_id"] is not None else None,
        parent_id=TaskId(int(m["parent_id"])) if m["parent_id"] is not None else None,
        event_type=m["event_type"],
        worker_id=m["worker_id"],
        attempt=m["attempt"],
        stage=m["stage"],
        from_status=m["from_status"],
        to_status=m["to_status"],
        message=m["message"],
        metadata=m["metadata"],
        created_at=m["created_at"],
    )


@dataclass(frozen=True, slots=True)
class EventFilter:
    task_id: int | None = None
    root_id: int | None = None
    event_types: Sequence[str] | None = None
    worker_id: str | None = None
    attempt: int | None = None
    stage: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_id: int | None = None
    task_name: str | None = None


def _where(q: Any, f: EventFilter) -> Any:
    if f.task_id is not None:
        q = q.where(E.c.task_id == f.task_id)
    if f.root_id is not None:
        q = q.where(E.c.root_id == f.root_id)
    if f.event_types:
        q = q.where(E.c.event_type.in_(list(f.event_types)))
    if f.worker_id:
        q = q.where(E.c.worker_id == f.worker_id)
    if f.attempt is not None:
        q = q.where(E.c.attempt == f.attempt)
    if f.stage is not None:
        q = q.where(E.c.stage == f.stage)
    if f.since is not None:
        q = q.where(E.c.created_at >= f.since)
    if f.until is not None:
        q = q.where(E.c.created_at <= f.until)
    if f.after_id is not None:
        q = q.where(E.c.id > f.after_id)
    if f.task_name:
        from flowd.store.schema import tasks as T

        q = q.where(E.c.task_id.in_(sa.select(T.c.id).where(T.c.name == f.task_name)))
    return q


def query(conn: sa.Connection, f: EventFilter, limit: int, offset: int, order: str = "asc") -> Page:
    ordering = [E.c.id.asc() if order == "asc" else E.c.id.desc()]
    return paging.page(conn, E, lambda q: _where(q, f), ordering, limit, offset, to_record)


def all_of_root(conn: sa.Connection, root_id: int) -> list[EventRecord]:
    rows = conn.execute(sa.select(E).where(E.c.root_id == root_id).order_by(E.c.id)).all()
    return [to_record(r) for r in rows]


def count_by_root(conn: sa.Connection, root_id: int, event_type: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(E).where(E.c.root_id == root_id)
    if event_type:
        q = q.where(E.c.event_type == event_type)
    return int(conn.execute(q).scalar_one())


def last_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(E.c.id), 0))).scalar_one())


def ended_per_bucket(
    conn: sa.Connection, event_types: Sequence[str], since: datetime, bucket_ms: int
) -> list[tuple[int, str, int]]:
    """(bucket start in ms after `since`, event type, count) of events from a running attempt.

    One grouped query over the `created_at` index; the bucket is computed in SQL with
    integer arithmetic that SQLite, PostgreSQL and MySQL agree on.
    """
    offset = sa.type_coerce(E.c.created_at, sa.BigInteger) - to_ms(since)
    bucket = (offset - offset % bucket_ms).label("bucket")
    rows = conn.execute(
        sa.select(bucket, E.c.event_type, sa.func.count())
        .where(E.c.created_at >= since, E.c.from_status == "running", E.c.event_type.in_(list(event_types)))
        .group_by(bucket, E.c.event_type)
    ).all()
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def recent_of_types(conn: sa.Connection, event_types: Sequence[str], limit: int, scan: int) -> list[EventRecord]:
    """The newest `limit` events of these types among the last `scan` events (a bounded PK range)."""
    newest = last_id(conn)
    rows = conn.execute(
        sa.select(E)
        .where(E.c.id > newest - scan, E.c.event_type.in_(list(event_types)))
        .order_by(E.c.id.desc())
        .limit(limit)
    ).all()
    return [to_record(r) for r in rows]
