"""Flow verbs: insert a flow, lock it, close it once (conditional on `running`), read it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import FINISHED_STATUSES, FlowRecord, TaskId, TaskRecord
from flowd.store.schema import flows as F
from flowd.store.schema import tasks as T
from flowd.store.tasks import to_record as task_record

RUNNING = "running"


def to_record(row: Any) -> FlowRecord:
    m = row._mapping
    return FlowRecord(
        id=int(m["id"]),
        kind=m["kind"],
        name=m["name"],
        status=m["status"],
        failure_policy=m["failure_policy"],
        deadline=m["deadline"],
        step_count=int(m["step_count"]),
        spec=m["spec"] or {},
        join_task_id=TaskId(int(m["join_task_id"])) if m["join_task_id"] is not None else None,
        aborted=bool(m["aborted"]),
        timed_out=bool(m["timed_out"]),
        result=m["result"],
        error=m["error"],
        starter_id=TaskId(int(m["starter_id"])) if m["starter_id"] is not None else None,
        entity_type=m["entity_type"],
        entity_id=m["entity_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
    )


def insert(conn: sa.Connection, values: Mapping[str, Any], now: datetime) -> int:
    """Insert a running flow; returns its id."""
    res = conn.execute(sa.insert(F).values(**values, status=RUNNING, created_at=now, updated_at=now))
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def get(conn: sa.Connection, flow_id: int, *, for_update: bool = False) -> FlowRecord | None:
    """Read a flow; `for_update` holds its row lock until commit (SQLite: the file lock is ours)."""
    q = sa.select(F).where(F.c.id == flow_id)
    if for_update and conn.dialect.name != "sqlite":
        q = q.with_for_update()
    row = conn.execute(q).first()
    return to_record(row) if row is not None else None


def close(conn: sa.Connection, flow_id: int, status: str, values: Mapping[str, Any], now: datetime) -> bool:
    """Move a running flow to `status`; False when it is no longer running (someone else won)."""
    res = conn.execute(
        sa.update(F)
        .where(F.c.id == flow_id, F.c.status == RUNNING)
        .values(**values, status=status, updated_at=now, finished_at=now)
    )
    return (res.rowcount or 0) == 1


def update(conn: sa.Connection, flow_id: int, values: Mapping[str, Any], now: datetime) -> None:
    conn.execute(sa.update(F).where(F.c.id == flow_id).values(**values, updated_at=now))


def steps(conn: sa.Connection, flow_id: int) -> list[TaskRecord]:
    """The flow's step tasks by step index (one query on the flow index)."""
    rows = conn.execute(sa.select(T).where(T.c.flow_id == flow_id).order_by(T.c.flow_step, T.c.id)).all()
    return [task_record(r) for r in rows]


def past_deadline(conn: sa.Connection, now: datetime, limit: int = 100) -> list[int]:
    """Running flows whose deadline has passed."""
    rows = conn.execute(
        sa.select(F.c.id).where(F.c.status == RUNNING, F.c.deadline <= now).order_by(F.c.deadline).limit(limit)
    ).all()
    return [int(r[0]) for r in rows]


def count_unfinished(conn: sa.Connection, flow_id: int) -> int:
    """Steps of the flow not yet completed or permanently_failed (read under the flow's lock)."""
    q = sa.select(sa.func.count()).where(
        T.c.flow_id == flow_id, T.c.status.notin_([s.value for s in FINISHED_STATUSES])
    )
    return int(conn.execute(q).scalar_one())
