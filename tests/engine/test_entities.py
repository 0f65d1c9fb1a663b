"""The entity projection follows each task's transitions in the same transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flowd.errors import BadInput
from flowd.manager import TaskManager
from tests.engine.conftest import drain


def _states(m: TaskManager, kind: str, ident: str) -> list[tuple[str, str]]:
    return [(t["name"], t["status"]) for t in m.entity(kind, ident)["tasks"]]


def test_entity__scheduled_processing_executed_or_failed(db_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(db_url)
    seen: list[Any] = []
    m.use("ok", lambda t: seen.append(m.entity("user", "u_1")["tasks"][-1]["status"]) or {"done": True})
    m.use("bad", lambda t: 1 / 0)
    first = m.submit("ok", {}, entity="user:u_1")
    m.submit("bad", {}, entity=("user", "u_1"), max_retries=2)
    m.submit("ok", {}, entity="user:u_2")
    assert _states(m, "user", "u_1") == [("bad", "scheduled"), ("ok", "scheduled")]
    drain(m)
    assert seen[0] == "processing", "claimed: processing while the handler runs"
    doc = m.entity("user", "u_1")
    assert doc["entity"] == {"type": "user", "id": "u_1"}
    bad, ok = doc["tasks"]
    assert (ok["task_id"], ok["status"], ok["result"]) == (first, "executed", {"done": True})
    assert bad["status"] == "failed" and "ZeroDivisionError" in bad["error"]
    assert ok["started_at"] <= ok["ended_at"] and ok["created_at"].endswith("Z")
    assert _states(m, "user", "u_2") == [("ok", "executed")]
    assert m.entity("user", "nobody")["tasks"] == []
    assert m.get_task(first).entity_id == "u_1"


def test_entity__pause_and_flow_steps(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(sqlite_url)
    m.use("step", lambda t: t.payload["n"])
    m.use("join", lambda t: len(t.payload["flow_results"]["steps"]))
    tid = m.submit("step", {"n": 0}, entity="item:9", delay=60)
    m.pause_task(tid)
    assert _states(m, "item", "9") == [("step", "paused")]
    m.start_flow([{"name": "step", "payload": {"n": n}} for n in (1, 2)], {"name": "join"}, entity=("item", "9"))
    drain(m)
    # the flow is one row, keyed by the flow (issue 18), not one per step and join
    assert _states(m, "item", "9") == [("flow", "executed"), ("step", "paused")]


def test_entity__bad_input_is_refused(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(sqlite_url)
    m.use("step", lambda t: None)
    with pytest.raises(BadInput, match="TYPE:ID"):
        m.submit("step", {}, entity="no-colon")
    with pytest.raises(BadInput, match="entity"):
        m.submit("step", {}, entity=":x")
    assert m.query_tasks().total == 0
