"""taskbuffer's TaskOnce (`submit(..., key=K, once=True)`) and a constraint group without a key
(one global group) — on every database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowd import constraint
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.rules.constraints import GLOBAL_KEY, render_key
from tests.engine.conftest import drain, run_concurrently

Make = Callable[..., TaskManager]


def test_once__returns_the_keys_task_even_after_it_finished(mgr: TaskManager) -> None:
    runs: list[int] = []
    mgr.use("init", lambda t: runs.append(t.id) or "ready")
    first = mgr.submit("init", {}, key="boot", once=True)
    assert mgr.submit("init", {}, key="boot", once=True) == first  # still pending
    drain(mgr)
    assert mgr.get_task(first).status == "completed"
    assert mgr.submit("init", {"other": 1}, key="boot", once=True) == first  # finished: still the one
    drain(mgr)
    assert runs == [first] and mgr.query_tasks(name="init").total == 1
    # a plain --key submit after the task finished enqueues anew (the key only dedups active tasks)
    again = mgr.submit("init", {}, key="boot")
    assert again != first


def test_once__also_after_a_permanent_failure(mgr: TaskManager) -> None:
    mgr.use("fragile", {"handler": lambda t: 1 / 0, "max_retries": 1})
    tid = mgr.submit("fragile", {}, key="k1", once=True)
    drain(mgr)
    assert mgr.get_task(tid).status == "permanently_failed"
    assert mgr.submit("fragile", {}, key="k1", once=True) == tid


@pytest.mark.parametrize(
    ("options", "match"),
    [({"once": True}, "--once needs --key"), ({"once": True, "key": "k", "debounce": 1}, "contradict")],
)
def test_once__needs_a_key_and_no_debounce(mgr: TaskManager, options: dict[str, Any], match: str) -> None:
    mgr.use("x", lambda t: None)
    with pytest.raises(BadInput, match=match):
        mgr.submit("x", {}, **options)
    with pytest.raises(BadInput, match="unknown option"):
        mgr.cron("x", "0 2 * * *", key="c", once=True)
    assert mgr.query_tasks().total == 0


def test_constraint_without_key__is_one_global_group() -> None:
    g = constraint("api", max_concurrent=5)
    assert g.key is None and g.as_dict()["key"] is None
    assert render_key(g.key, {}, {}) == GLOBAL_KEY
    assert render_key("{{all}}", {}, {}) == "{all}"  # the old escape still renders one constant key
    with pytest.raises(ValueError, match="template"):
        constraint("g", key="static")


def _peak(m: TaskManager, name: str) -> int:
    """The most attempts of `name` that overlapped in time."""
    spans = []
    for t in m.query_tasks(name=name, limit=1000).items:
        for a in m.task_audit(t.id)["attempts"]["items"]:
            spans.append((a["started_at"], 1))
            spans.append((a["ended_at"], -1))
    peak = cur = 0
    for _, d in sorted(spans, key=lambda s: (s[0], s[1])):  # an end before a start at the same instant
        cur += d
        peak = max(peak, cur)
    return peak


@pytest.mark.parametrize("template", [None, "{{all}}"])
def test_global_group__caps_runs_across_two_workers(db_url: str, make_manager: Make, template: str | None) -> None:
    groups = {"api": {"max_concurrent": 2} if template is None else {"key": template, "max_concurrent": 2}}
    managers = [make_manager(db_url, constraints=groups, max_concurrent_tasks=4) for _ in range(2)]
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def call(t: Any) -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1

    for m in managers:
        m.use("call", call)
    managers[0].submit_many([("call", {"n": i}) for i in range(10)])
    keys = managers[0].constraints()["keys"]
    assert [(k["group"], k["key"], k["pending"]) for k in keys] == [
        ("api", GLOBAL_KEY if template is None else "{all}", 10)
    ]
    run_concurrently(managers)
    assert managers[0].query_tasks(name="call", status="completed").total == 10
    assert state["peak"] == 2
    assert _peak(managers[0], "call") <= 2


def test_global_group__declared_on_a_handler(mgr: TaskManager) -> None:
    def limited(t: Any) -> None:
        time.sleep(0.02)

    mgr.use("limited", {"handler": limited, "constraints": [constraint("limited-global", max_concurrent=1)]})
    ids = [mgr.submit("limited", {}) for _ in range(3)]
    groups = {g["name"]: g for g in mgr.constraints()["groups"]}
    assert groups["limited-global"]["key"] is None
    drain(mgr)
    assert all(mgr.get_task(i).status == "completed" for i in ids)
    assert _peak(mgr, "limited") == 1
