"""Cron tasks driven by an explicit clock: occurrences, collapse, retries, pause, keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowd import SubTasks
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus, TaskType
from tests.engine.conftest import drain, event_types, outcomes

T0 = datetime(2026, 3, 1, 12, 0, 3, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def cm(db_url: str, make_manager: Callable[..., TaskManager], clock: Clock) -> TaskManager:
    return make_manager(db_url, clock=clock, timezone="UTC")


def test_cron__runs_each_occurrence_once_and_stays_pending(cm: TaskManager, clock: Clock) -> None:
    runs: list[int] = []
    cm.use("tick", lambda t: runs.append(t.attempt) or len(runs))
    tid = cm.cron("tick", "*/10 * * * * *", {})
    t = cm.get_task(tid)
    assert t.type is TaskType.CRON and t.next_run_time == T0.replace(second=10)
    drain(cm)
    assert runs == [], "not due yet"
    clock.advance(7)  # 12:00:10
    drain(cm)
    drain(cm)
    assert len(runs) == 1
    t = cm.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.result == 1
    assert t.next_run_time == T0.replace(second=20)
    clock.advance(55)  # 12:01:05 — the 20, 30, 40, 50, 60 s occurrences were missed
    drain(cm)
    assert len(runs) == 2, "missed occurrences collapse into one run"
    assert cm.get_task(tid).next_run_time == datetime(2026, 3, 1, 12, 1, 10, tzinfo=UTC)
    assert outcomes(cm, tid) == ["completed", "completed"]
    assert event_types(cm, tid).count("task_status_changed") == 2


def test_cron__retry_count_resets_after_a_good_run(cm: TaskManager, clock: Clock) -> None:
    state = {"fail": 1}

    def flaky(t: Any) -> str:
        if state["fail"]:
            state["fail"] -= 1
            raise RuntimeError("once")
        return "ok"

    cm.use("flaky", flaky)
    tid = cm.cron("flaky", "* * * * *", {}, max_retries=3)
    clock.advance(60)
    drain(cm)
    t = cm.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.retry_count == 0 and t.result == "ok"
    assert outcomes(cm, tid) == ["failed", "completed"]


def test_cron__attempts_used_up_pauses_then_resume_restarts(cm: TaskManager, clock: Clock) -> None:
    cm.use("bad", lambda t: 1 / 0)
    tid = cm.cron("bad", "* * * * *", {}, max_retries=2)
    clock.advance(60)
    drain(cm)
    t = cm.get_task(tid)
    assert t.status is TaskStatus.PAUSED and "ZeroDivisionError" in (t.error or "")
    cm.use("bad", lambda t: "fixed")
    cm.resume_task(tid)
    drain(cm)
    t = cm.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.result == "fixed" and t.retry_count == 0


def test_cron__can_fan_out(cm: TaskManager, clock: Clock) -> None:
    cm.use("nightly", lambda t: SubTasks([{"name": "part"}] * 2) if t.stage == 0 else len(t.children()))
    cm.use("part", lambda t: "p")
    tid = cm.cron("nightly", "* * * * *", {})
    clock.advance(60)
    drain(cm)
    t = cm.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.result == 2 and t.stage == 0


def test_cron_key__creates_or_updates_one_schedule(cm: TaskManager) -> None:
    cm.use("report", lambda t: None)
    a = cm.cron("report", "0 2 * * *", {"v": 1}, key="nightly-report")
    b = cm.cron("report", "0 3 * * *", {"v": 2}, key="nightly-report")
    assert a == b
    t = cm.get_task(a)
    assert t.cron_expr == "0 3 * * *" and t.payload == {"v": 2}
    assert cm.query_tasks(type="cron").total == 1


def test_submit_key__returns_the_active_task(cm: TaskManager) -> None:
    cm.use("job", lambda t: None)
    a = cm.submit("job", {}, key="k1")
    assert cm.submit("job", {"other": 1}, key="k1") == a
    drain(cm)
    assert cm.submit("job", {}, key="k1") != a, "a finished task no longer holds its key"


def test_cron__timezone_is_stored_with_the_schedule(cm: TaskManager) -> None:
    cm.use("report", lambda t: None)
    tid = cm.cron("report", "0 2 * * *", {}, tz="America/New_York")
    t = cm.get_task(tid)
    assert t.cron_tz == "America/New_York"
    assert t.next_run_time == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)  # 02:00 EST


@pytest.mark.parametrize("expr", ["61 * * * *", "nope", "* * * *"])
def test_cron__bad_expression_refused_and_nothing_written(cm: TaskManager, expr: str) -> None:
    cm.use("report", lambda t: None)
    with pytest.raises(BadInput):
        cm.cron("report", expr, {})
    assert cm.query_tasks().total == 0
