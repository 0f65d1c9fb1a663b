"""Flows (fan-out/fan-in with one join task) and chains, on every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from flowd.clock import utcnow
from flowd.engine import flows
from flowd.errors import BadInput, NotFound
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from tests.engine.conftest import drain, run_concurrently


def _joins(m: TaskManager, name: str = "merge") -> list[Any]:
    return list(m.query_tasks(name=name, order="asc").items)


def _register(m: TaskManager) -> None:
    m.use("square", lambda t: t.payload["n"] ** 2)
    m.use("boom", lambda t: 1 / 0)
    m.use("merge", lambda t: t.payload["flow_results"])
    m.use("slow", lambda t: "late")


def test_flow__join_runs_once_with_every_step_result(mgr: TaskManager) -> None:
    _register(mgr)
    steps = [{"name": "square", "payload": {"n": n}} for n in (1, 2, 3)]
    steps.append({"name": "boom", "max_retries": 1})
    fid = mgr.start_flow(steps, {"name": "merge", "payload": {"batch": "b1"}})
    drain(mgr)
    (join,) = _joins(mgr)
    assert join.status is TaskStatus.COMPLETED
    assert join.payload["batch"] == "b1"
    res = join.result
    assert res["aborted"] is False and res["timed_out"] is False and res["flow_id"] == fid
    by_index = {s["step_index"]: s for s in res["steps"]}
    assert [by_index[i]["result"] for i in range(3)] == [1, 4, 9]
    assert all(by_index[i]["status"] == "success" for i in range(3))
    assert by_index[3]["status"] == "fail" and "ZeroDivisionError" in by_index[3]["error"]
    shown = mgr.get_flow(fid)
    assert shown["status"] == "joined" and shown["outcome"] == "completed"
    assert shown["join_task_id"] == join.id and shown["join"]["status"] == "completed"
    assert [s["step_index"] for s in shown["steps"]] == [0, 1, 2, 3]


def test_flow__abort_dispatches_the_join_at_the_first_failure(lite: TaskManager) -> None:
    _register(lite)
    steps = [{"name": "boom", "max_retries": 1}, {"name": "square", "payload": {"n": 5}, "delay": 3600}]
    fid = lite.start_flow(steps, {"name": "merge"}, failure_policy="abort")
    drain(lite)
    (join,) = _joins(lite)
    res = join.result
    assert res["aborted"] is True and res["unfinished"] == [1]
    assert [s["step_index"] for s in res["steps"]] == [0]
    # the late step finishes after the join: nothing changes
    late = next(s for s in lite.get_flow(fid)["steps"] if s["step_index"] == 1)
    lite.cancel_task(late["task_id"], "not needed")
    assert len(_joins(lite)) == 1 and lite.get_flow(fid)["outcome"] == "aborted"


def test_flow__deadline_dispatches_the_join_with_timed_out(
    sqlite_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    now = [utcnow()]
    m = make_manager(sqlite_url, clock=lambda: now[0])
    _register(m)
    fid = m.start_flow(
        [{"name": "square", "payload": {"n": 2}}, {"name": "slow", "delay": 600}], {"name": "merge"}, timeout=30
    )
    w = m.make_worker()
    w.run_until_idle()
    assert _joins(m) == [] and m.get_flow(fid)["status"] == "running"
    now[0] += timedelta(seconds=31)
    w.run_once(now[0])
    w.run_until_idle()
    (join,) = _joins(m)
    assert join.result["timed_out"] is True and join.result["unfinished"] == [1]
    assert [s["result"] for s in join.result["steps"]] == [4]
    assert m.get_flow(fid)["outcome"] == "timed_out"
    assert flows.sweep_deadlines(m.db, now[0] + timedelta(seconds=60)) == []


def test_flow__deadline_sweep_from_many_workers_joins_once(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    managers = [make_manager(db_url) for _ in range(4)]
    for m in managers:
        _register(m)
    fids = [managers[0].start_flow([{"name": "slow", "delay": 600}], {"name": "merge"}, timeout=1) for _ in range(5)]
    later = utcnow() + timedelta(seconds=5)
    gate = threading.Barrier(len(managers), timeout=10)
    won: list[int] = []

    def sweep(m: TaskManager) -> None:
        gate.wait()
        won.extend(flows.sweep_deadlines(m.db, later))

    threads = [threading.Thread(target=sweep, args=(m,)) for m in managers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(won) == sorted(fids)
    assert len(_joins(managers[0])) == len(fids)


def test_flow__exactly_one_join__steps_finishing_on_several_workers(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    """Four workers finish the steps of many flows at the same moment."""
    rounds, width = 6, 6
    managers = [make_manager(db_url, max_concurrent_tasks=width) for _ in range(4)]
    barrier = threading.Barrier(width, timeout=10)

    def step(t: Any) -> int:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return int(t.payload["i"])

    for m in managers:
        m.use("step", step)
        m.use("merge", lambda t: sorted(s["result"] for s in t.payload["flow_results"]["steps"]))
    fids = [
        managers[0].start_flow([{"name": "step", "payload": {"i": i}} for i in range(width)], {"name": "merge"})
        for _ in range(rounds)
    ]
    run_concurrently(managers)
    m0 = managers[0]
    joins = _joins(m0)
    assert len(joins) == rounds
    assert sorted(m0.get_flow(f)["join_task_id"] for f in fids) == sorted(j.id for j in joins)
    assert all(j.status is TaskStatus.COMPLETED and j.result == list(range(width)) for j in joins)


def test_start_flow_from_a_handler__children_of_the_starter_and_flows_nest(lite: TaskManager) -> None:
    started: list[int] = []

    def fan(t: Any) -> Any:
        started.append(t.start_flow([{"name": "square", "payload": {"n": n}} for n in (2, 3)], {"name": "merge2"}))
        return "fanned"

    def merge2(t: Any) -> Any:
        total = sum(s["result"] for s in t.payload["flow_results"]["steps"])
        started.append(t.start_flow([{"name": "square", "payload": {"n": total}}], {"name": "merge"}))
        return total

    _register(lite)
    lite.use("fan", fan)
    lite.use("merge2", merge2)
    root = lite.submit("fan", {}, labels={"tenant": "acme"})
    drain(lite)
    first, second = (lite.get_flow(f) for f in started)
    assert first["starter_id"] == root and first["join"]["result"] == 13
    assert second["join"]["result"]["steps"][0]["result"] == 169
    everyone = lite.query_tasks(root_id=root).items
    assert len(everyone) == 1 + 3 + 2, "steps and joins of both flows share the starter's root"
    assert all(t.labels == {"tenant": "acme"} for t in everyone)
    assert "flow_started" in [e["event_type"] for e in lite.task_audit(root)["events"]["items"]]


def test_chain__each_step_gets_the_previous_result(mgr: TaskManager) -> None:
    mgr.use("add", lambda t: (t.payload.get("previous_result") or 0) + t.payload["n"])
    fid = mgr.start_chain([{"name": "add", "payload": {"n": n}} for n in (1, 10, 100)], name="sum")
    drain(mgr)
    f = mgr.get_flow(fid)
    assert f["status"] == "completed" and f["result"] == 111
    assert [s["result"] for s in f["steps"]] == [1, 11, 111]
    assert mgr.get_task(f["steps"][1]["task_id"]).payload == {"n": 10, "previous_result": 1}


def test_chain__a_failed_step_stops_it_and_the_error_names_chain_step_and_index(lite: TaskManager) -> None:
    lite.use("ok", lambda t: "ok")
    lite.use("bad", lambda t: 1 / 0)
    fid = lite.start_chain([{"name": "ok"}, {"name": "bad", "max_retries": 1}, {"name": "ok"}], name="deploy")
    drain(lite)
    f = lite.get_flow(fid)
    assert f["status"] == "failed" and len(f["steps"]) == 2, "the step after the failure never starts"
    assert "chain 'deploy'" in f["error"] and "step 1 (bad" in f["error"] and "ZeroDivisionError" in f["error"]


def test_start_flow__bad_input_is_refused_and_nothing_is_written(lite: TaskManager) -> None:
    _register(lite)
    with pytest.raises(BadInput, match="no handler named 'nope'"):
        lite.start_flow([{"name": "square"}, {"name": "nope"}], {"name": "merge"})
    with pytest.raises(BadInput, match="failure_policy"):
        lite.start_flow([{"name": "square"}], {"name": "merge"}, failure_policy="explode")
    with pytest.raises(BadInput, match="non-empty list"):
        lite.start_flow([], {"name": "merge"})
    with pytest.raises(BadInput, match="unknown keys"):
        lite.start_chain([{"name": "square", "colour": "red"}])
    assert lite.query_tasks().total == 0
    with pytest.raises(NotFound):
        lite.get_flow(1)


def test_delete__a_finished_flow_goes_with_its_last_task(mgr: TaskManager) -> None:
    _register(mgr)
    done = mgr.start_flow([{"name": "square", "payload": {"n": 1}}], {"name": "merge"})
    running = mgr.start_flow([{"name": "slow", "delay": 600}], {"name": "merge"})
    drain(mgr)
    assert mgr.delete_tasks(name="square") == 1
    assert mgr.get_flow(done)["steps"] == [], "its join still exists: the flow stays"
    assert mgr.delete_tasks(name="merge") == 1
    with pytest.raises(NotFound):
        mgr.get_flow(done)
    assert mgr.delete_tasks(name="slow") == 1
    assert mgr.get_flow(running)["status"] == "running", "a running flow is never deleted"
