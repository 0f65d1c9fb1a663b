"""Async tasks through a real in-process worker: results, retries, limits, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from typing import Any

import pytest

from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from tests.engine.conftest import drain, event_types, outcomes

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled


def test_submit__runs_once_and_writes_result_event_and_attempt(mgr: TaskManager) -> None:
    mgr.use("echo", lambda t: {"got": t.payload, "attempt": t.attempt})
    tid = mgr.submit("echo", {"x": 1})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.COMPLETED
    assert t.result == {"got": {"x": 1}, "attempt": 1}
    assert outcomes(mgr, tid) == ["completed"]
    assert event_types(mgr, tid) == ["task_created", "task_started", "task_completed"]
    assert t.last_event_type == "task_completed"


def test_submit_many__runs_every_item_in_order_and_refuses_a_bad_one_whole(mgr: TaskManager) -> None:
    seen: list[tuple[str, Any]] = []
    mgr.use("a", lambda t: seen.append(("a", t.payload["i"])))
    mgr.use("b", lambda t: seen.append(("b", t.payload["i"])))
    with pytest.raises(BadInput, match="not JSON-serialisable"):
        mgr.submit_many([("a", {"i": 0}), ("b", {"i": object()})])
    assert mgr.query_tasks().items == []  # nothing of the refused batch was written
    ids = mgr.submit_many([("a" if i % 2 else "b", {"i": i}) for i in range(6)], priority=2)
    assert ids == sorted(ids)
    drain(mgr)
    assert sorted(seen, key=lambda s: s[1]) == [("a" if i % 2 else "b", i) for i in range(6)]
    for i, tid in enumerate(ids):
        t = mgr.get_task(tid)
        assert (t.name, t.payload, t.priority, t.status) == ("a" if i % 2 else "b", {"i": i}, 2, TaskStatus.COMPLETED)


@pytest.mark.parametrize("value", [0, False, "", [], {}, None, 0.5, "text"])
def test_falsy_results__are_stored_as_given(mgr: TaskManager, value: Any) -> None:
    mgr.use("v", lambda t: value)
    tid = mgr.submit("v", {})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.COMPLETED
    assert t.result == value and type(t.result) is type(value)


def test_retries__count_total_attempts(mgr: TaskManager) -> None:
    def boom(t: Any) -> None:
        raise RuntimeError(f"boom {t.attempt}")

    mgr.use("boom", boom)
    tid = mgr.submit("boom", {}, max_retries=3)
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED
    assert t.error == "RuntimeError: boom 3"
    assert outcomes(mgr, tid) == ["failed", "failed", "failed"]
    types = event_types(mgr, tid)
    assert types.count("task_retry_scheduled") == 2 and types.count("task_retry_started") == 2
    assert types[-2:] == ["task_failed", "task_permanently_failed"]


def test_retry_interval__next_attempt_waits_exactly_the_interval(mgr: TaskManager) -> None:
    mgr.use("boom", lambda t: 1 / 0)
    tid = mgr.submit("boom", {}, max_retries=2, retry_interval=0.4)
    w = drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.retry_count == 1
    assert t.next_run_time is not None and t.updated_at is not None
    assert abs((t.next_run_time - t.updated_at).total_seconds() - 0.4) < 0.002
    deadline = time.monotonic() + 10
    while mgr.get_task(tid).status is TaskStatus.PENDING and time.monotonic() < deadline:
        w.run_once()
        time.sleep(0.02)
    w.run_until_idle()
    assert mgr.get_task(tid).status is TaskStatus.PERMANENTLY_FAILED
    atts = mgr.task_audit(tid)["attempts"]["items"]
    from flowd.clock import parse_iso

    gap = (parse_iso(atts[1]["started_at"]) - parse_iso(atts[0]["ended_at"])).total_seconds()
    assert gap >= 0.4


def test_result_too_large__fails_the_attempt_clearly(make_manager: Any, db_url: str) -> None:
    m = make_manager(db_url, max_result_bytes=100)
    m.use("big", lambda t: "x" * 200)
    tid = m.submit("big", {}, max_retries=1)
    drain(m)
    t = m.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED
    assert "over max_result_bytes=100" in (t.error or "")
    assert t.result is None


def test_unserialisable_result__fails_the_attempt(mgr: TaskManager) -> None:
    mgr.use("obj", lambda t: object())
    tid = mgr.submit("obj", {}, max_retries=1)
    drain(mgr)
    assert "not JSON-serialisable" in (mgr.get_task(tid).error or "")


def test_sys_exit_in_handler__fails_attempt_not_worker(mgr: TaskManager) -> None:
    mgr.use("quit", lambda t: sys.exit(3))
    mgr.use("echo", lambda t: "still alive")
    bad = mgr.submit("quit", {}, max_retries=1)
    good = mgr.submit("echo", {})
    drain(mgr)
    assert mgr.get_task(bad).status is TaskStatus.PERMANENTLY_FAILED
    assert "SystemExit" in (mgr.get_task(bad).error or "")
    assert mgr.get_task(good).result == "still alive"


def test_async_handler__runs_on_the_event_loop(mgr: TaskManager) -> None:
    async def ahandler(t: Any) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"async": True, "n": t.payload["n"]}

    mgr.use("a", ahandler)
    ids = [mgr.submit("a", {"n": i}) for i in range(5)]
    drain(mgr)
    assert [mgr.get_task(i).result for i in ids] == [{"async": True, "n": i} for i in range(5)]


def test_async_timeout__cancels_the_coroutine(mgr: TaskManager) -> None:
    cancelled = threading.Event()

    async def slow(t: Any) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    mgr.use("slow", slow)
    tid = mgr.submit("slow", {}, timeout=0.3, max_retries=1)
    drain(mgr)
    assert mgr.get_task(tid).status is TaskStatus.PERMANENTLY_FAILED
    assert outcomes(mgr, tid) == ["timeout"]
    assert cancelled.wait(5)


def test_sync_handler_ignoring_deadline__times_out_and_late_result_is_discarded(mgr: TaskManager) -> None:
    release = threading.Event()
    mgr.use("stuck", lambda t: release.wait(30) and "late result")
    tid = mgr.submit("stuck", {}, timeout=0.3, max_retries=1)
    w = mgr.make_worker()
    deadline = time.monotonic() + 10
    while mgr.get_task(tid).status is not TaskStatus.PERMANENTLY_FAILED and time.monotonic() < deadline:
        w.run_once()
        time.sleep(0.02)
    assert outcomes(mgr, tid) == ["timeout"]
    # the thread still runs: its slot stays busy until it returns
    assert w.free_slots() == mgr.settings.max_concurrent_tasks - 1
    release.set()
    w.run_until_idle()
    assert w.free_slots() == mgr.settings.max_concurrent_tasks
    t = mgr.get_task(tid)
    assert t.result is None and t.status is TaskStatus.PERMANENTLY_FAILED


def test_check_timeout__raises_after_deadline_and_ends_attempt_as_timeout(mgr: TaskManager) -> None:
    def polite(t: Any) -> str:
        while True:
            t.check_timeout()
            time.sleep(0.01)

    mgr.use("polite", polite)
    tid = mgr.submit("polite", {}, timeout=0.2, max_retries=2)
    drain(mgr)
    assert outcomes(mgr, tid) == ["timeout", "timeout"]
    assert mgr.get_task(tid).status is TaskStatus.PERMANENTLY_FAILED


def test_concurrency_limits__never_exceeded(make_manager: Any, db_url: str) -> None:
    m = make_manager(db_url, max_concurrent_tasks=3)
    lock = threading.Lock()
    live = {"all": 0, "limited": 0}
    peak = {"all": 0, "limited": 0}

    def work(kind: str) -> Any:
        def fn(t: Any) -> None:
            with lock:
                live["all"] += 1
                live[kind] = live.get(kind, 0) + 1
                peak["all"] = max(peak["all"], live["all"])
                peak["limited"] = max(peak["limited"], live["limited"])
            time.sleep(0.05)
            with lock:
                live["all"] -= 1
                live[kind] -= 1

        return fn

    m.use("free", work("free"))
    m.use("limited", {"handler": work("limited"), "options": {"max_concurrent": 1}})
    for _ in range(6):
        m.submit("free", {})
        m.submit("limited", {})
    drain(m)
    assert peak["all"] <= 3 and peak["limited"] == 1
    assert m.query_tasks(status="completed").total == 12


def test_priority__higher_first_then_due_time_then_id(make_manager: Any, db_url: str) -> None:
    m = make_manager(db_url, max_concurrent_tasks=1)
    order: list[str] = []
    m.use("p", lambda t: order.append(t.payload["p"]))
    for p in ("low1", "low2"):
        m.submit("p", {"p": p}, priority=1)
    for p in ("high1", "high2"):
        m.submit("p", {"p": p}, priority=9)
    drain(m)
    assert order == ["high1", "high2", "low1", "low2"]


def test_delay__task_is_not_claimed_before_it_is_due(mgr: TaskManager) -> None:
    mgr.use("echo", lambda t: "ok")
    tid = mgr.submit("echo", {}, delay=60)
    drain(mgr)
    assert mgr.get_task(tid).status is TaskStatus.PENDING


def test_worker_pause_and_resume__stop_and_restart_claiming(mgr: TaskManager) -> None:
    mgr.use("echo", lambda t: "ok")
    w = mgr.make_worker()
    w.pause()
    tid = mgr.submit("echo", {})
    w.run_once()
    assert mgr.get_task(tid).status is TaskStatus.PENDING
    w.resume()
    w.run_until_idle()
    assert mgr.get_task(tid).status is TaskStatus.COMPLETED


def test_pause_running_task__attempt_paused_and_late_result_discarded(mgr: TaskManager) -> None:
    go = threading.Event()
    started = threading.Event()

    def slow(t: Any) -> str:
        started.set()
        go.wait(10)
        return "late"

    mgr.use("slow", slow)
    tid = mgr.submit("slow", {})
    w = mgr.make_worker()
    w.run_once()
    assert started.wait(5)
    mgr.pause_task(tid)
    go.set()
    w.run_until_idle()
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.PAUSED and t.result is None
    assert outcomes(mgr, tid) == ["paused"]
    assert w.counters.stale == 1
    mgr.resume_task(tid)
    go.set()
    w.run_until_idle()
    assert mgr.get_task(tid).status is TaskStatus.COMPLETED
    assert outcomes(mgr, tid) == ["paused", "completed"]


def test_timeout_type__total_at_the_deadline_handler_from_check_timeout(make_manager: Any, db_url: str) -> None:
    from datetime import timedelta

    from flowd.clock import utcnow

    now = [utcnow()]
    m = make_manager(db_url, clock=lambda: now[0])
    release = threading.Event()
    m.use("ignores", lambda t: release.wait(10))

    def polite(t: Any) -> None:
        while True:
            t.check_timeout()
            time.sleep(0.005)

    m.use("polite", polite)
    a = m.submit("ignores", {}, timeout=5, max_retries=1)
    b = m.submit("polite", {}, timeout=5, max_retries=1)
    w = m.make_worker()
    w.run_once()
    assert len(w.running) == 2
    now[0] += timedelta(seconds=6)  # both deadlines pass; only `polite` notices by itself
    # wait for polite's own outcome; on PostgreSQL the inbox also holds LISTEN wake-ups (None)
    outcome = None
    deadline = time.monotonic() + 5
    while outcome is None and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            outcome = w._inbox.get(timeout=0.05)
    assert outcome is not None
    w._inbox.put(outcome)
    w.run_once()
    release.set()
    w.run_until_idle()

    def timeout_type(tid: int) -> Any:
        evs = m.task_audit(tid, event_types=["task_timed_out"])["events"]["items"]
        return [e["metadata"]["timeout_type"] for e in evs]

    assert timeout_type(a) == ["total"]
    assert timeout_type(b) == ["handler"]
