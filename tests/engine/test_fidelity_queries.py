"""fib-flow's workflow queries (`queryWorkflowAttempts`, `queryWorkflowEvents`), its attempt
filters on a task's audit, and `getTaskStatsByTag(tag, status)` — on every database."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from flowd import SubTasks
from flowd.clock import parse_iso
from flowd.errors import BadInput
from flowd.manager import TaskManager
from tests.engine.conftest import drain


def pipeline(t: Any) -> Any:
    if t.stage == 0:
        t.audit("fanning_out")
        return SubTasks([{"name": "square", "payload": {"n": n}} for n in (2, 3)] + [{"name": "bad", "payload": {}}])
    return sum(k["result"] or 0 for k in t.children())


def square(t: Any) -> Any:
    t.progress("squaring", stage_name="square", percent=50)
    return t.payload["n"] ** 2


def bad(t: Any) -> Any:
    raise ValueError("no good")


@pytest.fixture
def wf(mgr: TaskManager) -> int:
    """A finished workflow: root 1 (2 attempts), squares 2 and 3, `bad` 4 (failed twice)."""
    mgr.use({"pipeline": pipeline, "square": square, "bad": {"handler": bad, "max_retries": 2}})
    root = mgr.submit("pipeline", {})
    drain(mgr)
    assert mgr.get_task(root).status == "completed"
    return root


def _keys(page: dict[str, Any]) -> list[tuple[int, int]]:
    return [(a["task_id"], a["attempt"]) for a in page["items"]]


def test_workflow_attempts__every_task_of_the_workflow_filtered_and_paged(mgr: TaskManager, wf: int) -> None:
    root = wf
    page = mgr.workflow_attempts(root)
    assert page["total"] == 6 and not page["has_more"]
    kids = [t.id for t in mgr.query_tasks(root_id=root, order="asc").items if t.id != root]
    bad_id = kids[2]
    assert _keys(page) == [(root, 1), (root, 2), (kids[0], 1), (kids[1], 1), (bad_id, 1), (bad_id, 2)]
    assert {a["outcome"] for a in page["items"]} == {"completed", "suspended", "failed"}
    assert _keys(mgr.workflow_attempts(root, outcome="failed")) == [(bad_id, 1), (bad_id, 2)]
    assert mgr.workflow_attempts(root, outcome="timeout")["total"] == 0
    # any task id of the workflow finds the whole workflow
    assert mgr.workflow_attempts(kids[0])["total"] == 6
    worker = page["items"][0]["worker_id"]
    assert mgr.workflow_attempts(root, worker_id=worker)["total"] == 6
    assert mgr.workflow_attempts(root, worker_id="someone-else")["total"] == 0
    assert mgr.workflow_attempts(root, open_only=True)["total"] == 0
    second = mgr.workflow_attempts(root, limit=2, offset=2)
    assert _keys(second) == [(kids[0], 1), (kids[1], 1)] and second["has_more"] and second["total"] == 6
    newest_first = mgr.workflow_attempts(root, order="desc", limit=1)
    assert _keys(newest_first) == [(bad_id, 2)]
    # time ranges (inclusive): the root's resumed run starts after every child attempt ended
    resumed = parse_iso(page["items"][1]["started_at"])
    expected = [(a["task_id"], a["attempt"]) for a in page["items"] if parse_iso(a["started_at"]) >= resumed]
    assert (root, 2) in expected and (root, 1) not in expected
    assert _keys(mgr.workflow_attempts(root, started_after=resumed)) == expected
    first_end = parse_iso(page["items"][0]["ended_at"])  # the root's first run ends before any child starts
    assert _keys(mgr.workflow_attempts(root, ended_before=first_end)) == [(root, 1)]
    assert mgr.workflow_attempts(root, ended_after=first_end + timedelta(days=1))["total"] == 0
    assert mgr.workflow_attempts(root, started_before=first_end - timedelta(days=1))["total"] == 0


def test_workflow_events__types_worker_and_time_range(mgr: TaskManager, wf: int) -> None:
    root = wf
    every = mgr.workflow_events(root, limit=1000)
    assert every["total"] == len(every["items"]) > 20
    assert {e["root_id"] for e in every["items"]} == {root}
    cps = mgr.workflow_events(root, event_types=["task_checkpoint", "task_progress"])
    assert [e["event_type"] for e in cps["items"]] == ["task_checkpoint", "task_progress", "task_progress"]
    assert mgr.workflow_events(root, event_types="task_failed")["total"] == 2
    worker = next(e["worker_id"] for e in every["items"] if e["worker_id"])
    by_worker = mgr.workflow_events(root, worker_id=worker, limit=1000)
    assert 0 < by_worker["total"] < every["total"]  # task_created events have no worker
    assert all(e["worker_id"] == worker for e in by_worker["items"])
    last = parse_iso(every["items"][-1]["created_at"])
    tail = mgr.workflow_events(root, since=last, limit=1000)
    assert tail["total"] >= 1 and all(parse_iso(e["created_at"]) >= last for e in tail["items"])
    first = parse_iso(every["items"][0]["created_at"])
    head = mgr.workflow_events(root, until=first, limit=1000)
    assert head["items"][0]["event_type"] == "task_created" and head["total"] < every["total"]
    paged = mgr.workflow_events(root, limit=5, offset=5)
    assert [e["id"] for e in paged["items"]] == [e["id"] for e in every["items"][5:10]] and paged["has_more"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, r: m.workflow_attempts(r, outcome="exploded"), "unknown attempt outcome 'exploded'"),
        (lambda m, r: m.workflow_attempts(r, outcome="failed", open_only=True), "not both"),
        (lambda m, r: m.workflow_attempts(r, limit=0), "limit must be positive"),
        (lambda m, r: m.workflow_events(r, event_types=["task_exploded"]), "unknown event type"),
        (lambda m, r: m.workflow_events(r, order="sideways"), "order must be asc or desc"),
        (lambda m, r: m.task_audit(r, outcome="nope"), "unknown attempt outcome"),
    ],
)
def test_workflow_queries__refuse_bad_filters(mgr: TaskManager, call: Any, match: str) -> None:
    mgr.use("x", lambda t: None)
    root = mgr.submit("x", {})
    with pytest.raises(BadInput, match=match):
        call(mgr, root)


def test_task_audit__attempt_filters_of_the_reference(mgr: TaskManager, wf: int) -> None:
    bad_id = next(t.id for t in mgr.query_tasks(name="bad").items)
    attempts = mgr.task_audit(bad_id)["attempts"]["items"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]
    assert mgr.task_audit(bad_id, outcome="failed")["attempts"]["total"] == 2
    assert mgr.task_audit(bad_id, outcome="completed")["attempts"]["total"] == 0
    assert mgr.task_audit(bad_id, open_only=True)["attempts"]["total"] == 0
    second_start = parse_iso(attempts[1]["started_at"])
    got = mgr.task_audit(bad_id, started_after=second_start)["attempts"]["items"]
    assert [a["attempt"] for a in got] == [2]
    first_end = parse_iso(attempts[0]["ended_at"])
    assert [a["attempt"] for a in mgr.task_audit(bad_id, ended_before=first_end)["attempts"]["items"]] == [1]
    assert mgr.task_audit(bad_id, started_before=second_start - timedelta(days=1))["attempts"]["total"] == 0
    # the attempt filters leave the events alone
    assert mgr.task_audit(bad_id, outcome="completed")["events"]["total"] == mgr.task_audit(bad_id)["events"]["total"]


def test_open_attempts__found_while_running(mgr: TaskManager) -> None:
    go = threading.Event()
    mgr.use("slow", lambda t: go.wait(20))
    tid = mgr.submit("slow", {})
    w = mgr.make_worker()
    try:
        w.start()
        w.run_once()
        assert [a["attempt"] for a in mgr.workflow_attempts(tid, open_only=True)["items"]] == [1]
        assert mgr.task_audit(tid, open_only=True)["attempts"]["items"][0]["outcome"] is None
    finally:
        go.set()
    drain(mgr)
    assert mgr.workflow_attempts(tid, open_only=True)["total"] == 0
    assert mgr.workflow_attempts(tid, outcome="completed")["total"] == 1


def test_stats__by_tag_and_status(mgr: TaskManager) -> None:
    mgr.use({"ok": lambda t: 1, "no": {"handler": bad, "max_retries": 1}})
    mgr.submit("ok", {}, tag="a")
    mgr.submit("no", {}, tag="a")
    mgr.submit("ok", {}, tag="b")
    drain(mgr)
    mgr.submit("ok", {}, tag="a")  # still pending
    got = [(r["tag"], r["name"], r["status"], r["count"]) for r in mgr.stats("a", status="completed")]
    assert got == [("a", "ok", "completed", 1)]
    both = mgr.stats("a", status=["pending", "permanently_failed"])
    assert sorted((r["name"], r["status"]) for r in both) == [("no", "permanently_failed"), ("ok", "pending")]
    assert [r["tag"] for r in mgr.stats(status="completed")] == ["a", "b"]
    with pytest.raises(BadInput, match="unknown status 'done'"):
        mgr.stats("a", status="done")
