"""Retention: expired terminal workflows are deleted whole, in batches, by one worker at a time."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flowd import SubTasks
from flowd.audit import retention
from flowd.clock import after, to_ms, utcnow
from flowd.errors import BadInput, NotFound
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from flowd.store.db import Database
from tests.engine.conftest import drain

DAY = 86400.0


def fan_out(t: Any) -> Any:
    if t.stage == 0:
        return SubTasks([{"name": "ok", "payload": {}}, {"name": "boom", "payload": {}}])
    return [k["status"] for k in t.children()]


def boom(t: Any) -> Any:
    raise RuntimeError("boom")


def setup(m: TaskManager) -> None:
    m.use("ok", lambda t: "fine")
    m.use("boom", {"handler": boom, "options": {"max_retries": 1}})
    m.use("flow", fan_out)
    m.use("approve", lambda t: t.suspend("awaiting_approval") if t.stage == 0 else "approved")


def counts(db: Database) -> dict[str, int]:
    """Rows per table, and audit rows whose task no longer exists (must stay 0)."""
    with db.read() as conn:

        def n(sql: str) -> int:
            return int(conn.execute(sa.text(sql)).scalar_one())

        return {
            "tasks": n("SELECT COUNT(*) FROM flowd_tasks"),
            "events": n("SELECT COUNT(*) FROM flowd_task_events"),
            "attempts": n("SELECT COUNT(*) FROM flowd_task_attempts"),
            "orphans": n(
                "SELECT COUNT(*) FROM flowd_task_events e WHERE NOT EXISTS "
                "(SELECT 1 FROM flowd_tasks t WHERE t.id = e.task_id)"
            )
            + n(
                "SELECT COUNT(*) FROM flowd_task_attempts a WHERE NOT EXISTS "
                "(SELECT 1 FROM flowd_tasks t WHERE t.id = a.task_id)"
            ),
        }


def audit_rows(m: TaskManager, ids: list[int]) -> tuple[int, int]:
    docs = [m.task_audit(i) for i in ids]
    return sum(d["events"]["total"] for d in docs), sum(d["attempts"]["total"] for d in docs)


def later(make_manager: Any, db_url: str, seconds: float) -> TaskManager:
    t = after(utcnow(), seconds)
    m: TaskManager = make_manager(db_url, clock=lambda: t)
    return m


def test_retention__deletes_expired_terminal_workflows_whole_keeps_the_rest(db_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(db_url)
    setup(m)
    done = m.submit("ok")
    failed = m.submit("boom")
    flow = m.submit("flow")
    waiting = m.submit("approve")
    pending = m.submit("ok", delay=10 * DAY)
    paused = m.submit("ok", delay=10 * DAY)
    m.pause_task(paused)
    drain(m)
    assert m.get_task(flow).status is TaskStatus.COMPLETED
    assert m.get_task(waiting).status is TaskStatus.SUSPENDED
    flow_ids = [t.id for t in m.query_tasks(root_id=flow).items]
    assert len(flow_ids) == 3
    doomed = [done, failed, *flow_ids]
    events, attempts = audit_rows(m, doomed)
    before = counts(m.db)

    assert later(make_manager, db_url, 3600).run_retention() == {
        "tasks_deleted": 0,
        "events_deleted": 0,
        "attempts_deleted": 0,
    }, "nothing is an hour past its expiry"
    res = later(make_manager, db_url, 2 * DAY).run_retention()
    assert res == {"tasks_deleted": 5, "events_deleted": events, "attempts_deleted": attempts}
    after_ = counts(m.db)
    assert after_["orphans"] == 0
    assert after_["tasks"] == before["tasks"] - 5
    assert after_["events"] == before["events"] - events and after_["attempts"] == before["attempts"] - attempts
    for tid in doomed:
        with pytest.raises(NotFound):
            m.get_task(tid)
    assert {m.get_task(t).status for t in (waiting, pending, paused)} == {
        TaskStatus.SUSPENDED,
        TaskStatus.PENDING,
        TaskStatus.PAUSED,
    }
    # paused only when asked for; suspended never
    res = later(make_manager, db_url, 2 * DAY).run_retention({"statuses": ["paused"], "expire_time": 0})
    assert res["tasks_deleted"] == 1
    with pytest.raises(BadInput, match="retention deletes only"):
        m.run_retention({"statuses": ["suspended"]})
    with pytest.raises(BadInput, match="expire time"):
        m.run_retention({"expire_time": -1})
    assert [t.id for t in m.query_tasks(order="asc").items] == [waiting, pending]


def test_retention__a_workflow_is_kept_whole_while_any_member_may_not_go(sqlite_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(sqlite_url)
    setup(m)
    flow = m.submit("flow")
    drain(m)
    statuses = sorted(t.status.value for t in m.query_tasks(root_id=flow).items)
    assert statuses == ["completed", "completed", "permanently_failed"]
    # the failed child is not asked for: neither the root nor its completed sibling goes
    res = later(make_manager, sqlite_url, 2 * DAY).run_retention({"statuses": ["completed"]})
    assert res["tasks_deleted"] == 0
    # a member touched recently keeps the workflow: age everything but one child
    with m.db.write() as conn:
        old = after(utcnow(), -3 * DAY)
        conn.execute(
            sa.text("UPDATE flowd_tasks SET updated_at = :t WHERE id <> :kid"),
            {"t": to_ms(old), "kid": flow + 1},
        )
    assert m.run_retention()["tasks_deleted"] == 0
    assert later(make_manager, sqlite_url, 2 * DAY).run_retention()["tasks_deleted"] == 3
    assert counts(m.db) == {"tasks": 0, "events": 0, "attempts": 0, "orphans": 0}


def test_retention__runs_in_batches_of_workflows(sqlite_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(sqlite_url)
    setup(m)
    for _ in range(7):
        m.submit("ok")
    drain(m)
    seen: list[int] = []
    res = retention.run(m.db, retention.Policy(DAY), after(utcnow(), 2 * DAY), batch=3, on_batch=seen.append)
    assert seen == [3, 6, 7] and res.tasks_deleted == 7
    assert counts(m.db)["orphans"] == 0


def test_retention__running_pending_and_suspended_are_never_deleted(sqlite_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(sqlite_url)
    release = threading.Event()
    m.use("ok", lambda t: "fine")
    m.use("slow", lambda t: release.wait(30))
    m.use(
        "flow",
        lambda t: (
            SubTasks([{"name": "ok", "payload": {}}, {"name": "slow", "payload": {}}]) if t.stage == 0 else "done"
        ),
    )
    flow = m.submit("flow")
    lone = m.submit("slow")
    w = m.make_worker()
    try:
        deadline = datetime.now() + timedelta(seconds=20)

        def started() -> bool:
            kids = m.query_tasks(root_id=flow, name="slow", status="running").items
            done = m.query_tasks(root_id=flow, name="ok", status="completed").items
            return m.get_task(lone).status is TaskStatus.RUNNING and len(kids) == 1 and len(done) == 1

        while not started():
            assert datetime.now() < deadline, "slow tasks never started"
            w.run_once()
        # even when asked for every status, only the deletable ones could go, and none of these is
        policy = retention.Policy(0, ("completed", "running", "pending", "suspended"))
        res = retention.run(m.db, policy, after(utcnow(), 10 * DAY))
        assert res == retention.Result()
        statuses = sorted(t.status.value for t in m.query_tasks(root_id=flow).items)
        assert statuses == ["completed", "running", "suspended"], "a completed child of a live workflow stays"
    finally:
        release.set()
        w.run_until_idle()


def test_automatic_retention__one_holder_of_the_fleet_lease_at_a_time(db_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(db_url)
    now = utcnow()
    policy = retention.Policy(DAY)
    assert retention.run_if_leader(m.db, "w1", policy, now, lease=60) == retention.Result()
    assert retention.run_if_leader(m.db, "w2", policy, after(now, 1), lease=60) is None
    assert retention.run_if_leader(m.db, "w1", policy, after(now, 30), lease=60) is not None, "the holder renews"
    assert retention.run_if_leader(m.db, "w2", policy, after(now, 61), lease=60) is None
    assert retention.run_if_leader(m.db, "w2", policy, after(now, 91), lease=60) is not None, "taken once expired"
    assert retention.run_if_leader(m.db, "w1", policy, after(now, 92), lease=60) is None


def test_automatic_retention__a_worker_tick_runs_it_and_another_worker_waits(
    sqlite_url: str, make_manager: Any
) -> None:
    m: TaskManager = make_manager(sqlite_url, retention_interval=60)
    setup(m)
    first = m.submit("ok")
    drain(m)
    w1 = make_manager(sqlite_url, retention_interval=60, worker_id="w1").make_worker()
    w2 = make_manager(sqlite_url, retention_interval=60, worker_id="w2").make_worker()
    w1.start()
    w2.start()
    future = after(utcnow(), 2 * DAY)
    w1.run_once(future)
    with pytest.raises(NotFound):
        m.get_task(first)
    second = m.submit("ok")
    drain(m)
    w2.run_once(after(future, 1))  # w1 holds the lease: w2 leaves the expired task alone
    assert m.get_task(second).status is TaskStatus.COMPLETED
    w1.run_once(after(future, 61))
    with pytest.raises(NotFound):
        m.get_task(second)
