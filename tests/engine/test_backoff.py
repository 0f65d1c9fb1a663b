"""Retry backoff: fixed (today's behaviour) or exponential, capped, with optional jitter."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowd import handler
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from flowd.rules import transitions as rules
from tests.engine.conftest import drain

T0 = datetime(2026, 5, 1, 9, 0, 0, tzinfo=UTC)
Make = Callable[..., TaskManager]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _waits(m: TaskManager, tid: int) -> list[float]:
    events = m.task_audit(tid, event_types=["task_retry_scheduled"])["events"]["items"]
    return [e["metadata"]["wait"] for e in events]


def _run_failing(m: TaskManager, clock: Clock, tid: int, attempts: int) -> None:
    """Run every attempt, stepping the clock to each retry's due time."""
    for _ in range(attempts):
        drain(m)
        t = m.get_task(tid)
        if t.status is not TaskStatus.PENDING:
            return
        assert t.next_run_time is not None
        clock.now = t.next_run_time


def _boom(_task: Any) -> None:
    raise RuntimeError("boom")


def test_exponential__doubles_until_the_cap_and_records_each_wait(db_url: str, make_manager: Make) -> None:
    clock = Clock()
    m = make_manager(db_url, clock=clock)
    m.use("flaky", {"handler": _boom, "options": {"retry_backoff": "exponential", "retry_interval": 2}})
    tid = m.submit("flaky", {}, max_retries=6, retry_max_interval=10)
    t = m.get_task(tid)
    assert (t.retry_backoff, t.retry_interval, t.retry_max_interval, t.retry_jitter) == ("exponential", 2, 10, False)
    _run_failing(m, clock, tid, 6)
    assert m.get_task(tid).status is TaskStatus.PERMANENTLY_FAILED
    assert _waits(m, tid) == [2, 4, 8, 10, 10]


def test_fixed__is_the_default_and_waits_the_interval(db_url: str, make_manager: Make) -> None:
    clock = Clock()
    m = make_manager(db_url, clock=clock)
    m.use("flaky", _boom)
    tid = m.submit("flaky", {}, max_retries=3, retry_interval=1.5)
    assert m.get_task(tid).retry_backoff == "fixed"
    _run_failing(m, clock, tid, 3)
    assert _waits(m, tid) == [1.5, 1.5]


def test_jitter__draws_each_wait_from_half_to_whole(db_url: str, make_manager: Make) -> None:
    clock = Clock()
    m = make_manager(db_url, clock=clock, retry_backoff="exponential", retry_jitter=True)  # the settings
    m.use("flaky", _boom)
    ids = [m.submit("flaky", {}, max_retries=4, retry_interval=8) for _ in range(6)]
    for tid in ids:
        _run_failing(m, clock, tid, 4)
    waits = [_waits(m, tid) for tid in ids]
    for ws in waits:
        for n, w in enumerate(ws):
            full = 8 * 2**n
            assert full / 2 <= w <= full
    assert len({ws[0] for ws in waits}) > 1, "jitter spreads tasks that fail together"


def test_due_time__is_now_plus_the_wait(mgr: TaskManager) -> None:
    mgr.use("flaky", _boom)
    tid = mgr.submit("flaky", {}, max_retries=2, retry_interval=30, retry_backoff="exponential")
    before = datetime.now(UTC)
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.next_run_time is not None
    assert before + timedelta(seconds=29) < t.next_run_time < before + timedelta(seconds=60)


def test_options__are_validated_and_bounded(lite: TaskManager) -> None:
    lite.use("x", lambda t: None)
    with pytest.raises(BadInput, match="retry_backoff"):
        lite.submit("x", {}, retry_backoff="linear")
    with pytest.raises(BadInput, match="retry_max_interval"):
        lite.submit("x", {}, retry_max_interval=0)
    with pytest.raises(BadInput, match="ten years"):
        lite.submit("x", {}, retry_max_interval=11 * 365 * 86400)
    with pytest.raises(BadInput, match="retry_jitter"):
        lite.submit("x", {}, retry_jitter="yes")
    with pytest.raises(ValueError, match="retry_backoff"):
        handler("y", retry_backoff="sometimes")


def test_retry_wait__huge_retry_counts_stay_at_the_cap() -> None:
    from tests.rules.test_transitions import task

    t = task(
        retry_count=100_000,
        max_retries=1_000_000,
        retry_interval=1.0,
        retry_backoff="exponential",
        retry_max_interval=60.0,
    )
    assert rules.retry_wait(t) == 60.0
