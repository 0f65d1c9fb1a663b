"""Summary and projection details of the reference: a never-run root's summary, paused tasks
among failed ones, tq's entity projection (no retry spam, one row per flow) — every database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flowd.clock import utcnow
from flowd.manager import TaskManager
from tests.engine.conftest import drain

Make = Callable[..., TaskManager]


def test_summary__never_run_root_has_null_duration(mgr: TaskManager) -> None:
    mgr.use("x", lambda t: None)
    tid = mgr.submit("x", {}, delay=3600)
    timing = mgr.workflow_summary(tid)["timing"]
    assert timing["workflow_duration_seconds"] is None
    assert timing["first_started_at"] is None and timing["last_ended_at"] is None


def test_summary__failed_tasks_list_paused_ones(db_url: str, make_manager: Make) -> None:
    clock = {"now": utcnow()}
    mgr = make_manager(db_url, clock=lambda: clock["now"])

    def boom(t: Any) -> None:
        raise RuntimeError("cron broke")

    mgr.use("tick", {"handler": boom, "max_retries": 1})
    mgr.use("idle", lambda t: None)
    cron = mgr.cron("tick", "* * * * * *")
    clock["now"] += timedelta(seconds=2)  # its first occurrence is due
    drain(mgr)
    assert mgr.get_task(cron).status == "paused"
    failed = mgr.workflow_summary(cron)["failed_tasks"]
    assert failed == [{"task_id": cron, "name": "tick", "status": "paused", "error": "RuntimeError: cron broke"}]
    # a task paused by hand is listed too (it waits for a person, like a failure)
    later = mgr.submit("idle", {}, delay=3600)
    mgr.pause_task(later)
    assert [f["status"] for f in mgr.workflow_summary(later)["failed_tasks"]] == ["paused"]
    assert mgr.workflow_summary(later)["timing"]["workflow_duration_seconds"] is None


def _row(m: TaskManager, ident: str) -> dict[str, Any]:
    (row,) = m.entity("user", ident)["tasks"]
    return row


def test_projection__processing_from_the_first_attempt_and_a_retry_never_scheduled(
    db_url: str, make_manager: Make
) -> None:
    clock = {"now": utcnow()}
    m = make_manager(db_url, clock=lambda: clock["now"])
    seen: list[tuple[int, str, str | None]] = []

    def flaky(t: Any) -> str:
        row = _row(m, "u_1")
        seen.append((t.attempt, row["status"], row["started_at"]))
        if t.attempt == 1:
            raise ValueError("first try fails")
        return "ok"

    m.use("flaky", {"handler": flaky, "max_retries": 2, "retry_interval": 30})
    tid = m.submit("flaky", {}, entity="user:u_1")
    assert _row(m, "u_1")["status"] == "scheduled"
    w = m.make_worker()
    w.run_until_idle()
    # the retry waits 30 s: the object is still being processed, not scheduled again
    assert m.get_task(tid).status == "pending"
    between = _row(m, "u_1")
    assert between["status"] == "processing" and between["ended_at"] is None
    clock["now"] += timedelta(seconds=31)
    w.run_until_idle()
    assert [(a, s) for a, s, _ in seen] == [(1, "processing"), (2, "processing")]
    assert seen[0][2] == seen[1][2], "the retry's claim did not move the start"
    done = _row(m, "u_1")
    assert (done["status"], done["result"], done["error"]) == ("executed", "ok", None)
    assert done["started_at"] == seen[0][2]


def test_projection__retries_used_up_end_failed(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    m.use("bad", {"handler": lambda t: 1 / 0, "max_retries": 3})
    m.submit("bad", {}, entity="user:u_2")
    drain(m)
    row = _row(m, "u_2")
    assert row["status"] == "failed" and "ZeroDivisionError" in row["error"]


def test_projection__a_flow_is_one_row_keyed_by_the_flow(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    seen: list[str] = []

    def step(t: Any) -> int:
        seen.append(m.entity("item", "7")["tasks"][0]["status"])
        return int(t.payload["n"])

    m.use("step", step)
    m.use("join", lambda t: sum(s["result"] for s in t.payload["flow_results"]["steps"]))
    fid = m.start_flow([{"name": "step", "payload": {"n": n}} for n in (1, 2, 3)], {"name": "join"}, entity="item:7")
    (row,) = m.entity("item", "7")["tasks"]
    assert (row["flow_id"], row["task_id"], row["name"], row["status"]) == (fid, None, "flow", "scheduled")
    drain(m)
    assert seen == ["processing"] * 3
    (row,) = m.entity("item", "7")["tasks"]
    assert (row["flow_id"], row["status"], row["result"], row["error"]) == (fid, "executed", 6, None)
    assert row["started_at"] <= row["ended_at"]
    # the steps and the join still say which object they are about
    join_id = m.get_flow(fid)["join"]["id"]
    assert m.get_task(join_id).entity_id == "7"


def test_projection__a_flow_whose_join_fails_and_a_chain(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    m.use("add", lambda t: (t.payload.get("previous_result") or 0) + t.payload["n"])
    m.use("bad", {"handler": lambda t: 1 / 0, "max_retries": 1})
    m.use("step", lambda t: 1)
    flow = m.start_flow([{"name": "step"}], {"name": "bad"}, entity="order:1", name="checkout")
    adds = [{"name": "add", "payload": {"n": 1}}, {"name": "add", "payload": {"n": 10}}]
    good = m.start_chain(adds, entity="order:2")
    broken = m.start_chain([{"name": "add", "payload": {"n": 1}}, {"name": "bad"}], entity="order:2", name="deploy")
    drain(m)
    (f,) = m.entity("order", "1")["tasks"]
    assert (f["flow_id"], f["name"], f["status"]) == (flow, "checkout", "failed") and "ZeroDivision" in f["error"]
    rows = {r["flow_id"]: r for r in m.entity("order", "2")["tasks"]}
    assert set(rows) == {good, broken}
    assert (rows[good]["name"], rows[good]["status"], rows[good]["result"]) == ("chain", "executed", 11)
    assert rows[broken]["status"] == "failed" and "failed at step 1" in rows[broken]["error"]


def test_projection__deleting_a_flow_drops_its_row(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url)
    m.use("step", lambda t: 1)
    m.use("join", lambda t: 2)
    m.start_flow([{"name": "step"}], {"name": "join"}, entity="item:8")
    m.use("solo", lambda t: 3)
    m.submit("solo", {}, entity="item:8")
    drain(m)
    assert len(m.entity("item", "8")["tasks"]) == 2
    m.delete_tasks(all=True)
    assert m.entity("item", "8")["tasks"] == []
