"""Shapes the pages draw that the CLI has no JSON for: the workflow tree as rows, the Gantt bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flowd.clock import iso, seconds_between
from flowd.model import AttemptRecord, TaskNode, TaskRecord

# a timeline wider than this many attempts would be unreadable: the page says how many it left out
GANTT_LIMIT = 400


def tree_rows(
    root: TaskRecord,
    nodes: Sequence[TaskNode],
    attempts: Mapping[int, Sequence[AttemptRecord]],
    joins: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The workflow depth-first from the root (children by id), one row per task with its depth;
    `joins` maps a flow's join task to its flow, so steps and joins are marked."""
    joins = joins or {}
    kids: dict[int, list[TaskNode]] = {}
    orphans: list[TaskNode] = []
    ids = {n.id for n in nodes}
    for n in sorted(nodes, key=lambda n: n.id):
        if n.id == root.id:
            continue
        if n.parent_id is not None and n.parent_id in ids:
            kids.setdefault(n.parent_id, []).append(n)
        else:
            orphans.append(n)  # a flow's join, or a child whose parent was deleted
    rows: list[dict[str, Any]] = []
    start = next((n for n in nodes if n.id == root.id), TaskNode.of(root))
    # iterative: a deep workflow must not hit the recursion limit
    stack: list[tuple[TaskNode, int]] = [(o, 1) for o in reversed(orphans)] + [(start, 0)]
    while stack:
        node, depth = stack.pop()
        mine = attempts.get(node.id, [])
        spent = sum((a.ended_at - a.started_at).total_seconds() for a in mine if a.ended_at is not None)
        rows.append(
            {
                "id": node.id,
                "name": node.name,
                "status": node.status.value,
                "stage": node.stage,
                "depth": depth,
                "attempts": len(mine),
                "spent": round(spent, 3),
                "error": node.error,
                "stage_name": node.current_stage_name,
                "progress_text": node.progress_text,
                "progress_percent": node.progress_percent,
                "flow_id": joins.get(node.id, node.flow_id),
                "flow_role": "join"
                if node.id in joins
                else (None if node.flow_id is None else f"step {node.flow_step}"),
            }
        )
        stack.extend((k, depth + 1) for k in reversed(kids.get(node.id, [])))
    return rows


def gantt(
    root: TaskRecord,
    nodes: Sequence[TaskNode],
    attempts: Mapping[int, Sequence[AttemptRecord]],
    now: datetime,
) -> dict[str, Any]:
    """Every attempt of the workflow as a bar on one axis from the root's creation to the last end
    (an open attempt runs to `now`): left and width in percent of the span."""
    names = {n.id: n.name for n in nodes}
    # by start, then (task, number): an attempt in progress has no row id yet
    flat = sorted((a for ats in attempts.values() for a in ats), key=lambda a: (a.started_at, a.task_id, a.attempt))
    shown = flat[:GANTT_LIMIT]
    origin = root.created_at
    ends = [a.ended_at or now for a in shown]
    span = max([1e-3, *((e - origin).total_seconds() for e in ends)])
    bars = []
    for a, end in zip(shown, ends, strict=True):
        start_s = max(0.0, (a.started_at - origin).total_seconds())
        took = max(0.0, (end - a.started_at).total_seconds())
        bars.append(
            {
                "task_id": a.task_id,
                "name": names.get(a.task_id, "?"),
                "attempt": a.attempt,
                "stage": a.stage,
                "worker_id": a.worker_id,
                "outcome": a.outcome.value if a.outcome else "running",
                "started_at": iso(a.started_at),
                "duration": seconds_between(a.started_at, end),
                "left": round(100 * start_s / span, 3),
                "width": max(0.4, min(round(100 * took / span, 3), 100 - round(100 * start_s / span, 3))),
            }
        )
    return {"span": round(span, 3), "bars": bars, "hidden": len(flat) - len(shown)}
