"""Declared steps: `task.step()` sets the stage name and the weighted percentage."""

from __future__ import annotations

from typing import Any

import pytest

from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.rules.options import InvalidInput, check_steps, step_percent
from tests.engine.conftest import drain

STEPS = {"build": 30, "test": 20, "ship": 50}


def test_step_percent__weights_of_the_steps_before() -> None:
    assert [step_percent(STEPS, s) for s in STEPS] == [0.0, 30.0, 50.0]
    with pytest.raises(InvalidInput, match="undeclared step 'lint'"):
        step_percent(STEPS, "lint")
    with pytest.raises(InvalidInput):
        check_steps({"a": 0})


def test_steps__recorded_as_progress_and_100_at_success(mgr: TaskManager) -> None:
    def deploy(t: Any) -> str:
        t.step("build")
        t.step("test")
        return "shipped"

    mgr.use("deploy", {"handler": deploy, "options": {"steps": STEPS}})
    tid = mgr.submit("deploy", {})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.progress_percent == 100.0 and t.current_stage_name == "test"
    progress = [e["metadata"] for e in mgr.task_audit(tid, event_types=["task_progress"])["events"]["items"]]
    assert [(p["stage_name"], p["progress_percent"]) for p in progress] == [("build", 0.0), ("test", 30.0)]


def test_undeclared_step__fails_the_attempt(mgr: TaskManager) -> None:
    mgr.use("deploy", {"handler": lambda t: t.step("lint"), "options": {"steps": STEPS}})
    tid = mgr.submit("deploy", {}, max_retries=1)
    drain(mgr)
    assert "undeclared step 'lint'" in (mgr.get_task(tid).error or "")


def test_bad_steps__refused_at_registration(mgr: TaskManager) -> None:
    with pytest.raises((BadInput, InvalidInput)):
        mgr.use("deploy", {"handler": lambda t: None, "options": {"steps": {"a": -1}}})
