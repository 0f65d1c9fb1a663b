"""Workflows: SubTasks fan-out, multi-stage parents, suspension, exactly-once resume."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flowd import SubTasks
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from tests.engine.conftest import drain, event_types, outcomes, run_concurrently


def fan_out(t: Any) -> Any:
    if t.stage == 0:
        return SubTasks([{"name": "square", "payload": {"n": n}} for n in (1, 2, 3)], context=b"ctx")
    kids = t.children()
    return {"stage": t.stage, "ctx": (t.context or b"").decode(), "sum": sum(k["result"] for k in kids)}


def test_fan_out__parent_suspends_children_run_parent_resumes(mgr: TaskManager) -> None:
    mgr.use("parent", fan_out)
    mgr.use("square", lambda t: t.payload["n"] ** 2)
    root = mgr.submit("parent", {})
    drain(mgr)
    t = mgr.get_task(root)
    assert t.status is TaskStatus.COMPLETED
    assert t.result == {"stage": 1, "ctx": "ctx", "sum": 14}
    kids = mgr.query_tasks(parent_id=root, order="asc").items
    assert [k.root_id for k in kids] == [root] * 3 and [k.parent_stage for k in kids] == [0, 0, 0]
    assert outcomes(mgr, root) == ["suspended", "completed"]
    types = event_types(mgr, root)
    assert types.count("task_subtasks_created") == 1 and types.count("task_resumed") == 1


def test_children__sorted_by_id_with_status_result_and_error(mgr: TaskManager) -> None:
    seen: list[Any] = []

    def parent(t: Any) -> Any:
        if t.stage == 0:
            return SubTasks([{"name": "ok", "payload": {}}, {"name": "bad", "payload": {}, "max_retries": 1}])
        seen.extend(t.children())
        return "decided"

    mgr.use("parent", parent)
    mgr.use("ok", lambda t: "fine")
    mgr.use("bad", lambda t: 1 / 0)
    root = mgr.submit("parent", {}, max_retries=1)
    drain(mgr)
    assert mgr.get_task(root).result == "decided", "a failed child does not fail the parent"
    assert [k["id"] for k in seen] == sorted(k["id"] for k in seen)
    assert [(k["status"], k["result"]) for k in seen] == [("completed", "fine"), ("permanently_failed", None)]
    assert "ZeroDivisionError" in seen[1]["error"]


def test_multi_stage__stages_repeat_and_grandchildren_keep_the_root(mgr: TaskManager) -> None:
    def parent(t: Any) -> Any:
        if t.stage < 2:
            return SubTasks([{"name": "mid", "payload": {"s": t.stage}}])
        return [k["result"] for k in t.children()]

    def mid(t: Any) -> Any:
        if t.stage == 0:
            return SubTasks([{"name": "leaf", "payload": {}}])
        return f"mid{t.payload['s']}"

    mgr.use("parent", parent)
    mgr.use("mid", mid)
    mgr.use("leaf", lambda t: "leaf")
    root = mgr.submit("parent", {})
    drain(mgr)
    assert mgr.get_task(root).result == ["mid1"]
    everyone = mgr.query_tasks(root_id=root).items
    assert len(everyone) == 5 and all(x.root_id == root for x in everyone)
    assert outcomes(mgr, root) == ["suspended", "suspended", "completed"]


def test_empty_subtasks__resume_at_once(mgr: TaskManager) -> None:
    mgr.use("p", lambda t: SubTasks([]) if t.stage == 0 else f"stage {t.stage}")
    root = mgr.submit("p", {})
    drain(mgr)
    assert mgr.get_task(root).result == "stage 1"


def test_child_options__def_then_child_handler_then_parent_priority(mgr: TaskManager) -> None:
    mgr.use(
        "p",
        lambda t: (
            SubTasks([{"name": "c", "payload": {}}, {"name": "c", "payload": {}, "timeout": 5}]) if t.stage == 0 else 1
        ),
    )
    mgr.use("c", {"handler": lambda t: None, "options": {"timeout": 9, "max_retries": 4}})
    root = mgr.submit("p", {}, priority=7)
    drain(mgr)
    kids = mgr.query_tasks(parent_id=root, order="asc").items
    assert [(k.timeout, k.max_retries, k.priority) for k in kids] == [(9.0, 4, 7), (5.0, 4, 7)]


def test_unknown_child_handler__fails_the_parent_attempt(mgr: TaskManager) -> None:
    mgr.use("p", lambda t: SubTasks([{"name": "nope"}]))
    root = mgr.submit("p", {}, max_retries=1)
    drain(mgr)
    t = mgr.get_task(root)
    assert t.status is TaskStatus.PERMANENTLY_FAILED and "no handler named 'nope'" in (t.error or "")
    assert mgr.query_tasks(parent_id=root).total == 0


def test_suspend__waits_for_manual_resume_with_stage_and_context(mgr: TaskManager) -> None:
    def approval(t: Any) -> Any:
        if t.stage == 0:
            return t.suspend("awaiting_approval", context=b"draft-7")
        return {"approved_stage": t.stage, "ctx": t.context.decode()}

    mgr.use("approval", approval)
    tid = mgr.submit("approval", {}, timeout=0.2)
    drain(mgr)
    assert mgr.get_task(tid).status is TaskStatus.SUSPENDED
    drain(mgr)  # no timeout applies while suspended
    assert mgr.get_task(tid).status is TaskStatus.SUSPENDED
    mgr.resume_task(tid, "approved")
    drain(mgr)
    assert mgr.get_task(tid).result == {"approved_stage": 1, "ctx": "draft-7"}
    resumed = [e for e in mgr.task_audit(tid)["events"]["items"] if e["event_type"] == "task_resumed"]
    assert resumed[0]["metadata"]["resume_reason"] == "approved"


def test_cancel_suspended_child__parent_sees_a_failed_child(mgr: TaskManager) -> None:
    mgr.use("parent", lambda t: SubTasks([{"name": "gate"}]) if t.stage == 0 else t.children()[0]["error"])
    mgr.use("gate", lambda t: t.suspend("awaiting_approval"))
    root = mgr.submit("parent", {})
    drain(mgr)
    (child,) = mgr.query_tasks(parent_id=root).items
    assert child.status is TaskStatus.SUSPENDED
    mgr.cancel_task(child.id, "abandoned")
    drain(mgr)
    assert mgr.get_task(root).result == "abandoned"


def test_parent_resumes_exactly_once__siblings_finishing_on_several_workers(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    """Four workers finish the children at the same moment, many times over."""
    rounds, width = 8, 6
    managers = [make_manager(db_url, max_concurrent_tasks=width) for _ in range(4)]
    barrier = threading.Barrier(width, timeout=10)

    def child(t: Any) -> int:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return 1

    for m in managers:
        m.use("parent", lambda t: SubTasks([{"name": "child"}] * width) if t.stage == 0 else "done")
        m.use("child", child)
    roots = [managers[0].submit("parent", {}) for _ in range(rounds)]
    run_concurrently(managers)
    m0 = managers[0]
    for root in roots:
        assert m0.get_task(root).status is TaskStatus.COMPLETED
        assert event_types(m0, root).count("task_resumed") == 1
        assert outcomes(m0, root) == ["suspended", "completed"]
