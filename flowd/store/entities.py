"""The entity projection: one row per (entity, task), written with each of the task's transitions.

`flowd entity user u_123` reads it by primary key prefix, without scanning tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import NewTask, TaskRecord, TaskStatus
from flowd.store.schema import entities as E

S = TaskStatus

# what a task status means for the object it is about
PROJECTED = {
    S.PENDING: "scheduled",
    S.FAILED: "scheduled",  # never stored: a failure is retried or ends the task at once
    S.TIMEOUT: "scheduled",
    S.RUNNING: "processing",
    S.SUSPENDED: "processing",  # waiting for its children or a person
    S.PAUSED: "paused",
    S.COMPLETED: "executed",
    S.PERMANENTLY_FAILED: "failed",
}


def created(conn: sa.Connection, task_id: int, new: NewTask, now: datetime) -> None:
    """A new task bound to an entity: `scheduled`."""
    assert new.entity is not None
    conn.execute(
        sa.insert(E).values(
            entity_type=new.entity[0],
            entity_id=new.entity[1],
            task_id=task_id,
            name=new.name,
            status="scheduled",
            created_at=now,
            updated_at=now,
        )
    )


def transitioned(
    conn: sa.Connection, task: TaskRecord, to_status: TaskStatus, values: Mapping[str, Any], now: datetime
) -> None:
    """The task changed status (same transaction): project the new status, result or error."""
    row: dict[str, Any] = {"status": PROJECTED[to_status], "updated_at": now}
    if to_status in (S.COMPLETED, S.PERMANENTLY_FAILED):
        row["ended_at"] = now
    if "result" in values:
        row["result"] = values["result"]
    if "error" in values:
        row["error"] = values["error"]
    conn.execute(sa.update(E).where(E.c.task_id == task.id).values(**row))


def claimed(conn: sa.Connection, task_ids: Sequence[int], now: datetime) -> None:
    """Claimed tasks are `processing` (one statement for the whole claim)."""
    if task_ids:
        conn.execute(
            sa.update(E)
            .where(E.c.task_id.in_(list(task_ids)))
            .values(status="processing", started_at=now, ended_at=None, updated_at=now)
        )


def of_entity(conn: sa.Connection, entity_type: str, entity_id: str, limit: int) -> list[dict[str, Any]]:
    """The projection rows of one entity, newest task first."""
    rows = conn.execute(
        sa.select(E)
        .where(E.c.entity_type == entity_type, E.c.entity_id == entity_id)
        .order_by(E.c.task_id.desc())
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


def delete_for(conn: sa.Connection, task_ids: Sequence[int]) -> None:
    conn.execute(sa.delete(E).where(E.c.task_id.in_(list(task_ids))))
