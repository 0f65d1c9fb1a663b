"""The entity projection: one row per (entity, task), written with each of the task's transitions.

`flowd entity user u_123` reads it by primary key prefix, without scanning tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import EventType, NewTask, TaskRecord, TaskStatus
from flowd.rules.transitions import Transition
from flowd.store.schema import entities as E
from flowd.store.schema import entity_flows as F

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
    """A new task bound to an entity: `scheduled` (a flow's step: its flow's row stands for it)."""
    assert new.entity is not None
    if new.flow_id is not None:
        return
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


# back to pending without a new run being scheduled for the object: a retry, a recovery, a
# parent resumed after its children — the projection stays `processing` (tq: no retry spam)
STILL_PROCESSING = frozenset({EventType.TASK_RETRY_SCHEDULED, EventType.TASK_RECOVERED, EventType.TASK_RESUMED})


def transitioned(conn: sa.Connection, task: TaskRecord, tr: Transition, now: datetime) -> None:
    """The task changed status (same transaction): project the new status, result or error."""
    to_status, values = tr.to_status, tr.values
    if task.flow_id is not None:
        return  # a step: its flow's row moves when the flow does (`flow_closed`, the join's end)
    if to_status is S.PENDING and any(e.type in STILL_PROCESSING for e in tr.events):
        return
    row: dict[str, Any] = {"status": PROJECTED[to_status], "updated_at": now}
    if to_status in (S.COMPLETED, S.PERMANENTLY_FAILED):
        row["ended_at"] = now
    if "result" in values:
        row["result"] = values["result"]
    if "error" in values:
        row["error"] = values["error"]
    res = conn.execute(sa.update(E).where(E.c.task_id == task.id).values(**row))
    if (res.rowcount or 0) == 0 and "ended_at" in row:
        # no row of its own: the join of a flow bound to the entity, whose end is the flow's
        conn.execute(sa.update(F).where(F.c.join_task_id == task.id).values(**row))


def claimed(conn: sa.Connection, tasks: Sequence[TaskRecord], now: datetime) -> None:
    """Claimed tasks (and the flows of claimed steps) are `processing` — from their first
    attempt: a retry's claim finds the row `processing` already and leaves it, start time included."""
    bound = [t for t in tasks if t.entity_type is not None]
    if not bound:
        return
    started = {"status": "processing", "started_at": now, "ended_at": None, "updated_at": now}
    task_ids = [t.id for t in bound if t.flow_id is None]
    if task_ids:
        conn.execute(sa.update(E).where(E.c.task_id.in_(task_ids), E.c.status != "processing").values(**started))
    flow_ids = sorted({t.flow_id for t in bound if t.flow_id is not None})
    if flow_ids:
        conn.execute(sa.update(F).where(F.c.flow_id.in_(flow_ids), F.c.status == "scheduled").values(**started))


def flow_started(
    conn: sa.Connection, flow_id: int, kind: str, name: str | None, entity: tuple[str, str], now: datetime
) -> None:
    """A flow or chain bound to an entity: one `scheduled` row for the whole flow."""
    conn.execute(
        sa.insert(F).values(
            flow_id=flow_id,
            entity_type=entity[0],
            entity_id=entity[1],
            kind=kind,
            name=name or kind,
            status="scheduled",
            created_at=now,
            updated_at=now,
        )
    )


def join_created(conn: sa.Connection, flow_id: int, join_task_id: int, now: datetime) -> None:
    """The flow's join exists: its end will be the flow's (it keeps no row of its own)."""
    conn.execute(sa.delete(E).where(E.c.task_id == join_task_id))
    conn.execute(sa.update(F).where(F.c.flow_id == flow_id).values(join_task_id=join_task_id, updated_at=now))


def flow_closed(conn: sa.Connection, flow_id: int, status: str, values: Mapping[str, Any], now: datetime) -> None:
    """A chain finished (`executed` with its result) or stopped (`failed` with the error)."""
    row = {"status": status, "updated_at": now, "ended_at": now}
    row.update({k: values[k] for k in ("result", "error") if k in values})
    conn.execute(sa.update(F).where(F.c.flow_id == flow_id).values(**row))


def of_entity(conn: sa.Connection, entity_type: str, entity_id: str, limit: int) -> list[dict[str, Any]]:
    """The projection rows of one entity (tasks, and flows with `flow_id`), newest first."""
    tasks = conn.execute(
        sa.select(E)
        .where(E.c.entity_type == entity_type, E.c.entity_id == entity_id)
        .order_by(E.c.task_id.desc())
        .limit(limit)
    ).all()
    flows = conn.execute(
        sa.select(F)
        .where(F.c.entity_type == entity_type, F.c.entity_id == entity_id)
        .order_by(F.c.flow_id.desc())
        .limit(limit)
    ).all()
    rows = [{**r._mapping, "flow_id": None} for r in tasks]
    rows += [{**r._mapping, "task_id": None} for r in flows]
    rows.sort(key=lambda r: (r["created_at"], r["task_id"] or 0, r["flow_id"] or 0), reverse=True)
    return rows[:limit]


def delete_for(conn: sa.Connection, task_ids: Sequence[int]) -> None:
    conn.execute(sa.delete(E).where(E.c.task_id.in_(list(task_ids))))


def delete_gone_flows(conn: sa.Connection, flow_ids: Sequence[int], deleted_tasks: Sequence[int]) -> None:
    """Drop the rows of flows that no longer exist (deleted with their last task)."""
    from flowd.store.schema import flows

    gone = ~sa.exists().where(flows.c.id == F.c.flow_id)
    conn.execute(
        sa.delete(F).where(sa.or_(F.c.flow_id.in_(list(flow_ids)), F.c.join_task_id.in_(list(deleted_tasks))), gone)
    )
