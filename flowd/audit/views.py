"""Audit read views: a task with its events and attempts; a whole workflow; the summary."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from flowd.audit.summary import summarize
from flowd.errors import NotFound
from flowd.model import AttemptRecord, TaskNode, TaskRecord
from flowd.rules.shapes import attempt_json, event_json, page_json, task_json
from flowd.store import attempts as attempt_store
from flowd.store import events as event_store
from flowd.store import tasks as task_store
from flowd.store.attempts import AttemptFilter
from flowd.store.db import Database
from flowd.store.events import EventFilter
from flowd.store.tasks import TaskFilter


def _task(conn: Any, task_id: int) -> TaskRecord:
    t = task_store.get(conn, task_id)
    if t is None:
        raise NotFound(f"task {task_id} not found")
    return t


def task_audit(
    db: Database,
    task_id: int,
    events: EventFilter | None = None,
    attempts: AttemptFilter | None = None,
    limit: int = 1000,
    offset: int = 0,
    order: str = "asc",
) -> dict[str, Any]:
    """`{"task", "events": Page, "attempts": Page}` for one task."""
    with db.read() as conn:
        t = _task(conn, task_id)
        evs = event_store.query(conn, replace(events or EventFilter(), task_id=task_id), limit, offset, order)
        ats = attempt_store.query(conn, replace(attempts or AttemptFilter(), task_id=task_id), limit, 0, order)
    return {"task": task_json(t), "events": page_json(evs, event_json), "attempts": page_json(ats, attempt_json)}


def workflow_audit(db: Database, task_id: int, limit: int = 10000, offset: int = 0) -> dict[str, Any]:
    """`{"task": root, "tasks": Page, "events": Page}` for the workflow containing `task_id`."""
    with db.read() as conn:
        t = _task(conn, task_id)
        root = _task(conn, t.root_id) if t.root_id not in (None, t.id) else t
        tasks = task_store.query(conn, TaskFilter(root_id=root.id), limit, offset, order="asc")
        evs = event_store.query(conn, EventFilter(root_id=root.id), limit, offset, "asc")
    return {"task": task_json(root), "tasks": page_json(tasks, task_json), "events": page_json(evs, event_json)}


def _root(conn: Any, task_id: int) -> TaskRecord:
    t = _task(conn, task_id)
    return _task(conn, t.root_id) if t.root_id not in (None, t.id) else t


def workflow_attempts(
    db: Database, task_id: int, f: AttemptFilter, limit: int, offset: int, order: str
) -> dict[str, Any]:
    """`{"task": root, "attempts": Page}`: the attempts of every task of the workflow containing `task_id`."""
    with db.read() as conn:
        root = _root(conn, task_id)
        ats = attempt_store.query(conn, replace(f, root_id=root.id), limit, offset, order)
    return {"task": task_json(root), "attempts": page_json(ats, attempt_json)}


def workflow_events(db: Database, task_id: int, f: EventFilter, limit: int, offset: int, order: str) -> dict[str, Any]:
    """`{"task": root, "events": Page}`: the events of every task of the workflow containing `task_id`."""
    with db.read() as conn:
        root = _root(conn, task_id)
        evs = event_store.query(conn, replace(f, root_id=root.id), limit, offset, order)
    return {"task": task_json(root), "events": page_json(evs, event_json)}


def _workflow(conn: Any, task_id: int) -> tuple[TaskRecord, list[TaskNode], list[AttemptRecord]]:
    t = _task(conn, task_id)
    root = _task(conn, t.root_id) if t.root_id not in (None, t.id) else t
    nodes = task_store.nodes_of_root(conn, root.id) or [TaskNode.of(root)]
    return root, nodes, attempt_store.of_root(conn, root.id)


def workflow_tree(db: Database, task_id: int) -> tuple[TaskRecord, list[TaskNode], dict[int, list[AttemptRecord]]]:
    """The root, every task of its workflow, and each task's attempts (for the tree view)."""
    with db.read() as conn:
        root, tasks, ats = _workflow(conn, task_id)
    by_task: dict[int, list[AttemptRecord]] = {}
    for a in ats:
        by_task.setdefault(a.task_id, []).append(a)
    return root, tasks, by_task


def workflow_summary(db: Database, task_id: int, now: datetime) -> dict[str, Any]:
    """The summary document of the workflow containing `task_id` (CONTRACT §4), from one read."""
    with db.read() as conn:
        root, tasks, attempts = _workflow(conn, task_id)
        n_events = event_store.count_by_root(conn, root.id)
        n_cp = event_store.count_by_root(conn, root.id, "task_checkpoint")
    return summarize(root, tasks, attempts, n_events, n_cp, now)
