"""Workflow summary and critical path, computed from records (pure)."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flowd.clock import iso, seconds_between
from flowd.model import AttemptRecord, TaskNode, TaskRecord
from flowd.rules.shapes import attempt_json, task_json

FAILED = ("failed", "timeout", "permanently_failed")
# `failed_tasks` lists paused tasks too (a cron task that used up its attempts), as the reference does
FAILED_TASKS = (*FAILED, "paused")


def _duration(a: AttemptRecord, now: datetime) -> float:
    """An attempt's duration; an open attempt counts up to `now`."""
    return seconds_between(a.started_at, a.ended_at or now) or 0.0


def _key(a: AttemptRecord) -> tuple[int, int]:
    """An attempt's identity: (task, number); the attempt in progress has no row id yet."""
    return (a.task_id, a.attempt)


def critical_path(
    root: TaskNode,
    tasks: Sequence[TaskNode],
    attempts: Sequence[AttemptRecord],
    now: datetime,
    durations: Mapping[tuple[int, int], float] | None = None,
) -> dict[str, Any]:
    """The heaviest root-to-leaf chain: each task weighs its longest attempt.

    Children are visited by id; the heaviest child branch wins, ties going to the lower id.
    """
    kids: dict[int, list[TaskNode]] = defaultdict(list)
    for t in sorted(tasks, key=lambda t: t.id):
        if t.parent_id is not None and t.id != root.id:
            kids[t.parent_id].append(t)
    dur = durations if durations is not None else {_key(a): _duration(a, now) for a in attempts}
    best: dict[int, AttemptRecord] = {}
    for a in sorted(attempts, key=lambda a: (a.task_id, a.attempt)):
        cur = best.get(a.task_id)
        # strictly longer replaces: equal durations keep the earlier attempt
        if cur is None or dur[_key(a)] > dur[_key(cur)]:
            best[a.task_id] = a
    # weight of the heaviest chain below each task, and the child it goes through;
    # computed bottom-up with an explicit stack (workflows can be deeper than Python's recursion)
    weight: dict[int, float] = {}
    via: dict[int, TaskNode | None] = {}
    seen: set[int] = set()
    stack: list[tuple[TaskNode, bool]] = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if not expanded:
            if t.id in seen:
                continue
            seen.add(t.id)
            stack.append((t, True))
            stack.extend((k, False) for k in kids.get(t.id, []) if k.id not in seen)
            continue
        # a child left unweighed would be a cycle in broken data: it is skipped
        ready = [k for k in kids.get(t.id, []) if k.id in weight]
        chosen = max(ready, key=lambda k: weight[k.id], default=None)  # first maximum: the lower id
        own = dur[_key(best[t.id])] if t.id in best else 0.0
        weight[t.id] = own + (weight[chosen.id] if chosen is not None else 0.0)
        via[t.id] = chosen
    chain: list[TaskNode] = []
    node: TaskNode | None = root
    while node is not None:
        chain.append(node)
        node = via.get(node.id)
    total = weight[root.id]
    nodes = []
    for t in chain:
        rep = best.get(t.id)
        nodes.append(
            {
                "task_id": t.id,
                "name": t.name,
                "status": t.status.value,
                "stage": rep.stage if rep else t.stage,
                "attempt": rep.attempt if rep else None,
                "outcome": rep.outcome.value if rep and rep.outcome else None,
                "duration_seconds": dur[_key(rep)] if rep else 0.0,
                "started_at": iso(rep.started_at) if rep else None,
                "ended_at": iso(rep.ended_at) if rep else None,
            }
        )
    return {"total_duration_seconds": round(total, 3), "nodes": nodes}


def summarize(
    root: TaskRecord,
    tasks: Sequence[TaskNode],
    attempts: Sequence[AttemptRecord],
    event_count: int,
    checkpoint_count: int,
    now: datetime,
) -> dict[str, Any]:
    """The `flowd audit summary` document (CONTRACT §4)."""
    starts = [a.started_at for a in attempts]
    ends = [a.ended_at for a in attempts if a.ended_at is not None]
    last_event = max((t.last_event_time for t in tasks if t.last_event_time), default=None)
    last_end = max(ends) if ends else None
    root_node = next((t for t in tasks if t.id == root.id), None) or TaskNode.of(root)
    root_attempts = sorted((a for a in attempts if a.task_id == root.id), key=lambda a: a.attempt)
    dur = {_key(a): _duration(a, now) for a in attempts}
    # ties: the lower row id first, an attempt in progress (no row yet) after the rows
    slowest = heapq.nsmallest(5, attempts, key=lambda a: (-dur[_key(a)], a.id is None, a.id or 0, _key(a)))
    return {
        "root_task": task_json(root),
        "totals": {
            "tasks": len(tasks),
            "attempts": len(attempts),
            "events": event_count,
            "checkpoints": checkpoint_count,
        },
        "status_counts": dict(sorted(Counter(t.status.value for t in tasks).items())),
        "attempt_outcome_counts": dict(
            sorted(Counter(a.outcome.value if a.outcome else "open" for a in attempts).items())
        ),
        "workers": sorted({a.worker_id for a in attempts if a.worker_id}),
        "timing": {
            "created_at": iso(root.created_at),
            "first_started_at": iso(min(starts)) if starts else None,
            "last_ended_at": iso(last_end),
            "last_event_time": iso(last_event),
            # from the root's creation to the last attempt's end; null until an attempt has ended
            "workflow_duration_seconds": seconds_between(root.created_at, last_end),
        },
        "stage_timings": [
            {
                "stage": a.stage,
                "attempt": a.attempt,
                "started_at": iso(a.started_at),
                "ended_at": iso(a.ended_at),
                "duration_seconds": seconds_between(a.started_at, a.ended_at),
                "outcome": a.outcome.value if a.outcome else None,
                "worker_id": a.worker_id,
            }
            for a in root_attempts
        ],
        "failed_tasks": [
            {"task_id": t.id, "name": t.name, "status": t.status.value, "error": t.error}
            for t in sorted(tasks, key=lambda t: t.id)
            if t.status.value in FAILED_TASKS
        ],
        "critical_path": critical_path(root_node, tasks, attempts, now, dur),
        "slowest_attempts": [{**attempt_json(a), "duration_seconds": dur[_key(a)]} for a in slowest],
    }
