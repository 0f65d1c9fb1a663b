"""The shapes the workflow page draws: the tree's rows and the timeline's bars (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from flowd.model import AttemptOutcome, AttemptRecord, TaskId, TaskNode, TaskStatus
from flowd.web.views import gantt, tree_rows
from tests.rules.test_transitions import NOW, task

S = TaskStatus


def node(tid: int, parent: int | None, status: S = S.COMPLETED, **kw: object) -> TaskNode:
    base = TaskNode.of(replace(task(status), id=TaskId(tid), name=f"t{tid}", parent_id=parent))
    return replace(base, **kw)  # type: ignore[arg-type]


def attempt(tid: int, n: int, start: float, end: float | None, outcome: AttemptOutcome | None) -> AttemptRecord:
    return AttemptRecord(
        id=tid * 10 + n,
        task_id=TaskId(tid),
        attempt=n,
        worker_id="w1",
        started_at=NOW + timedelta(seconds=start),
        ended_at=NOW + timedelta(seconds=end) if end is not None else None,
        outcome=outcome,
        error=None,
        stage=0,
    )


def test_tree_rows__depth_first_children_by_id_then_orphans() -> None:
    root = replace(task(S.COMPLETED), id=TaskId(1))
    nodes = [node(1, None), node(3, 1), node(2, 1), node(4, 2), node(5, 99, flow_id=8, flow_step=0), node(6, None)]
    ats = {2: [attempt(2, 1, 0, 1.5, AttemptOutcome.FAILED), attempt(2, 2, 2, 2.25, AttemptOutcome.COMPLETED)]}
    rows = tree_rows(root, nodes, ats, joins={6: 8})
    assert [(r["id"], r["depth"]) for r in rows] == [(1, 0), (2, 1), (4, 2), (3, 1), (5, 1), (6, 1)]
    two = rows[1]
    assert (two["attempts"], two["spent"]) == (2, 1.75)
    assert [(r["flow_id"], r["flow_role"]) for r in rows[-2:]] == [(8, "step 0"), (8, "join")]
    assert rows[0]["flow_role"] is None


def test_gantt__bars_on_one_axis_from_the_root_s_creation() -> None:
    root = replace(task(S.RUNNING), id=TaskId(1), created_at=NOW)
    ats = {
        1: [attempt(1, 1, 1, 2, AttemptOutcome.SUSPENDED)],
        2: [attempt(2, 1, 2, None, None)],  # still running: drawn up to now
    }
    doc = gantt(root, [node(1, None), node(2, 1)], ats, NOW + timedelta(seconds=4))
    assert doc["span"] == 4 and doc["hidden"] == 0
    bars = [(b["task_id"], b["outcome"], b["left"], b["width"], b["duration"]) for b in doc["bars"]]
    assert bars == [(1, "suspended", 25.0, 25.0, 1.0), (2, "running", 50.0, 50.0, 2.0)]
