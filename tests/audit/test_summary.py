"""The workflow summary and its critical path, from plain records (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flowd.audit.summary import critical_path, summarize
from flowd.model import AttemptOutcome, AttemptRecord, TaskId, TaskNode, TaskRecord, TaskStatus
from tests.rules.test_transitions import task as base_task

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task(tid: int, parent: int | None = None, status: str = "completed", root: int = 1, **kw: Any) -> TaskRecord:
    """A task record of workflow `root` (built on the state-machine tests' record)."""
    return base_task(
        TaskStatus(status),
        id=TaskId(tid),
        name=kw.pop("name", f"t{tid}"),
        parent_id=TaskId(parent) if parent is not None else None,
        root_id=TaskId(root),
        parent_stage=0 if parent is not None else None,
        last_event_type="task_created",
        last_event_time=kw.pop("last_event_time", T0),
        created_at=T0,
        updated_at=T0,
        **kw,
    )


_ids = iter(range(1, 10_000))


def attempt(
    tid: int, n: int, start: float, end: float | None, outcome: str | None = "completed", **kw: Any
) -> AttemptRecord:
    return AttemptRecord(
        id=next(_ids),
        task_id=TaskId(tid),
        attempt=n,
        worker_id=kw.get("worker", "w1"),
        started_at=at(start),
        ended_at=at(end) if end is not None else None,
        outcome=AttemptOutcome(outcome) if outcome else None,
        error=kw.get("error"),
        stage=kw.get("stage", 0),
    )


def cpath(tasks: list[TaskRecord], attempts: list[AttemptRecord], now: float) -> dict[str, Any]:
    """The critical path of `tasks` (the first is the root)."""
    nodes = [TaskNode.of(t) for t in tasks]
    return critical_path(nodes[0], nodes, attempts, at(now))


def summary(root: TaskRecord, tasks: list[TaskRecord], attempts: list[AttemptRecord], *args: Any) -> dict[str, Any]:
    return summarize(root, [TaskNode.of(t) for t in tasks], attempts, *args)


def path(cp: dict[str, Any]) -> list[int]:
    return [n["task_id"] for n in cp["nodes"]]


def test_critical_path__heaviest_branch_each_task_weighing_its_longest_attempt() -> None:
    tasks = [task(1), task(2, 1), task(3, 1), task(4, 3), task(5, 2)]
    attempts = [
        attempt(1, 1, 0, 1, "suspended"),
        attempt(1, 2, 9, 9.5, stage=1),
        attempt(2, 1, 1, 3),  # branch 2→5: 2 + 1 = 3
        attempt(5, 1, 3, 4),
        attempt(3, 1, 1, 2, "failed"),  # branch 3→4: longest attempt of 3 is 2.5, + 1 = 3.5
        attempt(3, 2, 2, 4.5),
        attempt(4, 1, 4.5, 5.5),
    ]
    cp = cpath(tasks, attempts, 100)
    assert path(cp) == [1, 3, 4]
    assert cp["total_duration_seconds"] == 1 + 2.5 + 1
    node3 = cp["nodes"][1]
    assert (node3["attempt"], node3["outcome"], node3["duration_seconds"]) == (2, "completed", 2.5)
    assert node3["started_at"] == "2026-11-22T12:00:02.000Z" and node3["ended_at"] == "2026-11-22T12:00:04.500Z"


def test_critical_path__ties_go_to_the_lower_id() -> None:
    tasks = [task(1), task(7, 1), task(3, 1), task(5, 1)]
    attempts = [attempt(1, 1, 0, 1), attempt(7, 1, 1, 3), attempt(3, 1, 1, 3), attempt(5, 1, 1, 2)]
    assert path(cpath(tasks, attempts, 10)) == [1, 3]


def test_critical_path__equal_attempts_the_first_represents_the_task() -> None:
    tasks = [task(1)]
    attempts = [attempt(1, 2, 5, 7, "completed"), attempt(1, 1, 0, 2, "failed")]
    (node,) = cpath(tasks, attempts, 10)["nodes"]
    assert (node["attempt"], node["outcome"]) == (1, "failed")


def test_critical_path__an_open_attempt_counts_up_to_now() -> None:
    tasks = [task(1, status="suspended"), task(2, 1, status="running"), task(3, 1)]
    attempts = [attempt(1, 1, 0, 1, "suspended"), attempt(2, 1, 1, None, None), attempt(3, 1, 1, 4)]
    cp = cpath(tasks, attempts, 11)
    assert path(cp) == [1, 2]
    open_node = cp["nodes"][1]
    assert (open_node["duration_seconds"], open_node["ended_at"], open_node["outcome"]) == (10.0, None, None)
    assert cp["total_duration_seconds"] == 11.0


def test_critical_path__never_run_root_and_children_weigh_zero_and_the_lowest_id_leads() -> None:
    tasks = [task(1, status="pending")]
    cp = cpath(tasks, [], 5)
    assert cp == {
        "total_duration_seconds": 0.0,
        "nodes": [
            {
                "task_id": 1,
                "name": "t1",
                "status": "pending",
                "stage": 0,
                "attempt": None,
                "outcome": None,
                "duration_seconds": 0.0,
                "started_at": None,
                "ended_at": None,
            }
        ],
    }
    kids = [task(1, status="suspended"), task(4, 1, status="pending"), task(2, 1, status="pending")]
    assert path(cpath(kids, [attempt(1, 1, 0, 1, "suspended")], 5)) == [1, 2]


def test_critical_path__multi_stage_grandchildren_and_deep_chains() -> None:
    # stage 0 children 2, 3; stage 1 child 4 with grandchild 5: the deepest weighs most
    tasks = [task(1), task(2, 1), task(3, 1), task(4, 1, stage=0), task(5, 4)]
    attempts = [
        attempt(1, 1, 0, 1, "suspended"),
        attempt(2, 1, 1, 2),
        attempt(3, 1, 1, 2.5),
        attempt(1, 2, 3, 3.2, "suspended", stage=1),
        attempt(4, 1, 3.2, 4, "suspended"),
        attempt(5, 1, 4, 6),
        attempt(4, 2, 6, 6.1),
        attempt(1, 3, 6.1, 6.3, stage=2),
    ]
    cp = cpath(tasks, attempts, 10)
    assert path(cp) == [1, 4, 5]
    assert cp["total_duration_seconds"] == 1 + 0.8 + 2
    # a chain deeper than Python's recursion limit is walked without recursion
    chain = [task(1)] + [task(i, i - 1) for i in range(2, 3001)]
    cp = cpath(chain, [attempt(3000, 1, 0, 1)], 10)
    assert len(cp["nodes"]) == 3000 and cp["total_duration_seconds"] == 1.0


def test_summarize__counts_timing_stages_failures_and_five_slowest() -> None:
    root = task(1, last_event_time=at(9))
    tasks = [
        root,
        task(2, 1, status="permanently_failed", error="ValueError: bad input\nTraceback...", last_event_time=at(4)),
        task(3, 1),
        task(4, 1, status="running"),
    ]
    attempts = [
        attempt(1, 1, 0.5, 1, "suspended", worker="wa"),
        attempt(2, 1, 1, 2, "failed", worker="wb", error="boom"),
        attempt(2, 2, 2, 4, "failed", worker="wa", error="ValueError: bad input"),
        attempt(3, 1, 1, 1.25, worker="wb"),
        attempt(4, 1, 1, None, None, worker="wc"),
        attempt(1, 2, 8, 8.5, stage=1, worker="wa"),
    ]
    doc = summary(root, tasks, attempts, 40, 3, at(10))
    assert set(doc) == {
        "root_task",
        "totals",
        "status_counts",
        "attempt_outcome_counts",
        "workers",
        "timing",
        "stage_timings",
        "failed_tasks",
        "critical_path",
        "slowest_attempts",
    }
    assert doc["root_task"]["id"] == 1
    assert doc["totals"] == {"tasks": 4, "attempts": 6, "events": 40, "checkpoints": 3}
    assert doc["status_counts"] == {"completed": 2, "permanently_failed": 1, "running": 1}
    assert doc["attempt_outcome_counts"] == {"completed": 2, "failed": 2, "open": 1, "suspended": 1}
    assert doc["workers"] == ["wa", "wb", "wc"]
    assert doc["timing"] == {
        "created_at": "2026-11-22T12:00:00.000Z",
        "first_started_at": "2026-11-22T12:00:00.500Z",
        "last_ended_at": "2026-11-22T12:00:08.500Z",
        "last_event_time": "2026-11-22T12:00:09.000Z",
        "workflow_duration_seconds": 8.5,
    }
    assert [(s["stage"], s["attempt"], s["duration_seconds"], s["outcome"]) for s in doc["stage_timings"]] == [
        (0, 1, 0.5, "suspended"),
        (1, 2, 0.5, "completed"),
    ]
    assert set(doc["stage_timings"][0]) == {
        "stage", "attempt", "started_at", "ended_at", "duration_seconds", "outcome", "worker_id"
    }  # fmt: skip
    assert doc["failed_tasks"] == [
        {"task_id": 2, "name": "t2", "status": "permanently_failed", "error": "ValueError: bad input\nTraceback..."}
    ]
    slow = doc["slowest_attempts"]
    assert [(a["task_id"], a["attempt"], a["duration_seconds"]) for a in slow] == [
        (4, 1, 9.0),  # open: up to now
        (2, 2, 2.0),
        (2, 1, 1.0),
        (1, 1, 0.5),
        (1, 2, 0.5),
    ]
    assert {"id", "task_id", "attempt", "worker_id", "started_at", "ended_at", "duration", "outcome", "error"} <= set(
        slow[0]
    )
    assert doc["critical_path"]["nodes"][1]["task_id"] == 4


def test_summarize__never_run_root_has_no_start_and_no_duration() -> None:
    root = task(1, status="pending")
    doc = summary(root, [root], [], 1, 0, at(3))
    assert doc["timing"] == {
        "created_at": "2026-11-22T12:00:00.000Z",
        "first_started_at": None,
        "last_ended_at": None,
        "last_event_time": "2026-11-22T12:00:00.000Z",
        "workflow_duration_seconds": None,  # the reference's null: no attempt has ended
    }
    assert doc["stage_timings"] == [] and doc["slowest_attempts"] == [] and doc["failed_tasks"] == []
    assert doc["attempt_outcome_counts"] == {} and doc["workers"] == []
    assert doc["critical_path"]["total_duration_seconds"] == 0.0
