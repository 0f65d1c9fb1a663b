"""Leases, supersede, reaping and fencing with in-process workers; staleness by ageing rows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from flowd import SubTasks
from flowd.clock import after, to_ms, utcnow
from flowd.engine.worker import Worker
from flowd.manager import TaskManager
from flowd.model import TaskStatus, WorkerStatus
from tests.engine.conftest import event_types, outcomes

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled

Make = Callable[..., TaskManager]


def sql(m: TaskManager, statement: str, **params: Any) -> None:
    with m.db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def worker_status(m: TaskManager, worker_id: str) -> WorkerStatus:
    return next(w.status for w in m.workers().items if w.worker_id == worker_id)


class Gate:
    """A handler that blocks its first worker until released, then does `late` things."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def handler(self, late: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def fn(t: Any) -> Any:
            if t.worker_id == "wa":
                self.started.set()
                self.release.wait(20)
                return late(t)
            return f"from {t.worker_id}"

        return fn


def finish_stale(wa: Worker, gate: Gate) -> None:
    """Let the old worker's handler return and write its outcome, without claiming again."""
    wa.pause()
    gate.release.set()
    wa.run_until_idle()


def two_workers(db_url: str, make: Make, gate: Gate, late: Callable[[Any], Any], **kw: Any) -> tuple[Any, ...]:
    ma = make(db_url, pod_id="a", worker_id="wa")
    mb = make(db_url, pod_id="a", worker_id="wb", **kw)
    for m in (ma, mb):
        m.use("job", gate.handler(late))
        m.use("child", lambda t: "child")
    tid = ma.submit("job", {})
    wa = ma.make_worker()
    wa.run_once()
    assert gate.started.wait(10)
    return ma, mb, wa, tid


def test_restart_of_a_pod__supersedes_and_recovers_at_once(db_url: str, make_manager: Make) -> None:
    gate = Gate()
    _ma, mb, wa, tid = two_workers(db_url, make_manager, gate, lambda t: "late")
    wb = mb.make_worker()
    wb.start()  # registration alone recovers the task: no timeout involved
    t = mb.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.worker_id is None and t.retry_count == 0
    assert worker_status(mb, "wa") is WorkerStatus.SUPERSEDED
    rec = mb.task_audit(tid, event_types=["task_recovered"])["events"]["items"]
    assert rec[0]["metadata"] == {
        "recovered_from_worker_id": "wa",
        "recovered_by_worker_id": "wb",
        "recovery_reason": "superseded",
    }
    wb.run_until_idle()
    assert mb.get_task(tid).result == "from wb"
    finish_stale(wa, gate)
    assert outcomes(mb, tid) == ["interrupted", "completed"]


def test_stale_attempt__every_kind_of_write_is_fenced(db_url: str, make_manager: Make) -> None:
    gate = Gate()

    def late(t: Any) -> Any:
        t.progress("late progress", percent=99)
        t.audit("late_checkpoint")
        return "late result"

    _ma, mb, wa, tid = two_workers(db_url, make_manager, gate, late)
    wb = mb.make_worker()
    wb.run_until_idle()
    assert mb.get_task(tid).result == "from wb"
    finish_stale(wa, gate)
    t = mb.get_task(tid)
    assert t.result == "from wb" and t.progress_percent is None
    types = event_types(mb, tid)
    assert "task_checkpoint" not in types and "task_progress" not in types
    assert wa.counters.stale == 1 and wa.counters.completed == 0


@pytest.mark.parametrize("kind", ["failure", "children"])
def test_stale_attempt__failure_and_children_are_fenced(db_url: str, make_manager: Make, kind: str) -> None:
    late = (lambda t: 1 / 0) if kind == "failure" else (lambda t: SubTasks([{"name": "child"}]))
    gate = Gate()
    _ma, mb, wa, tid = two_workers(db_url, make_manager, gate, late)
    mb.make_worker().start()  # recovered, not yet re-run
    finish_stale(wa, gate)
    t = mb.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.retry_count == 0 and t.error is None
    assert mb.query_tasks(parent_id=tid).total == 0
    assert wa.counters.stale == 1


def test_stale_heartbeat__does_not_touch_a_recovered_task(db_url: str, make_manager: Make) -> None:
    gate = Gate()
    ma, mb, _wa, tid = two_workers(db_url, make_manager, gate, lambda t: None)
    mb.make_worker().start()
    sql(mb, "UPDATE flowd_tasks SET heartbeat_at = 0 WHERE id = :id", id=tid)
    from flowd.store import tasks as task_store

    with ma.db.write() as conn:
        assert task_store.heartbeat(conn, "wa", [(tid, 1)], utcnow()) == 0
    gate.release.set()


def test_expired_lease__reaped_by_a_worker_of_another_pod(db_url: str, make_manager: Make) -> None:
    gate = Gate()
    _ma, _mb, _wa, tid = two_workers(db_url, make_manager, gate, lambda t: "late")
    mc = make_manager(db_url, pod_id="c", worker_id="wc")
    mc.use("job", gate.handler(lambda t: None))
    sql(mc, "UPDATE flowd_workers SET expires_at = 0 WHERE worker_id = 'wa'")
    wc = mc.make_worker()
    wc.start()
    assert worker_status(mc, "wa") is WorkerStatus.DEAD
    rec = mc.task_audit(tid, event_types=["task_recovered"])["events"]["items"]
    assert rec[0]["metadata"]["recovery_reason"] == "dead"
    wc.run_until_idle()
    assert mc.get_task(tid).result == "from wc"
    gate.release.set()


def test_recover_running_jobs_false__leaves_the_task_to_its_timeouts(db_url: str, make_manager: Make) -> None:
    gate = Gate()
    _ma, mb, wa, tid = two_workers(db_url, make_manager, gate, lambda t: "late", recover_running_jobs=False)
    mb.make_worker().start()
    assert worker_status(mb, "wa") is WorkerStatus.SUPERSEDED
    assert mb.get_task(tid).status is TaskStatus.RUNNING
    finish_stale(wa, gate)
    assert mb.get_task(tid).result == "late", "still its attempt: the write is not stale"


def test_lost_lease__stands_by_while_a_peer_holds_the_pod_else_reregisters(db_url: str, make_manager: Make) -> None:
    ma = make_manager(db_url, pod_id="a", worker_id="wa")
    mb = make_manager(db_url, pod_id="a", worker_id="wb")
    for m in (ma, mb):
        m.use("job", lambda t: t.worker_id)
    wa = ma.make_worker()
    wa.start()
    wb = mb.make_worker()
    wb.start()
    now = after(utcnow(), 0.5)  # wa's heartbeat is due; wb's 2 s lease still runs
    wa.run_once(now)
    assert wa.standby
    tid = ma.submit("job", {})
    wa.run_once(now)
    assert ma.get_task(tid).status is TaskStatus.PENDING, "a standby worker does not claim"
    sql(mb, "UPDATE flowd_workers SET status = 'dead' WHERE worker_id = 'wb'")
    wa.run_once(after(now, 0.5))
    assert not wa.standby and worker_status(ma, "wa") is WorkerStatus.ACTIVE
    wa.run_until_idle()
    assert ma.get_task(tid).result == "wa"


def test_lost_lease__logged_once_per_change_not_at_every_heartbeat(db_url: str, make_manager: Make) -> None:
    from structlog.testing import capture_logs

    ma = make_manager(db_url, pod_id="a", worker_id="wa")
    mb = make_manager(db_url, pod_id="a", worker_id="wb", worker_heartbeat_timeout=60)
    wa = ma.make_worker()
    wa.start()
    mb.make_worker().start()
    now = utcnow()
    with capture_logs() as logs:
        for i in range(1, 13):  # twelve heartbeats of a worker standing by
            wa.run_once(after(now, 0.25 * i))
        assert wa.standby
        sql(mb, "UPDATE flowd_workers SET status = 'dead' WHERE worker_id = 'wb'")
        for i in range(13, 20):  # back to active, and seven heartbeats holding the lease
            wa.run_once(after(now, 0.25 * i))
        assert not wa.standby
    events = [e["event"] for e in logs if e["event"].startswith("worker_")]
    assert events.count("worker_lease_lost") == 1, events
    assert events.count("worker_standby") == 1 and events.count("worker_active") == 1, events
    assert events.count("worker_reregistered") == 1, events


def test_own_row_marked_dead__worker_reregisters(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url, pod_id="a", worker_id="wa")
    w: Worker = m.make_worker()
    w.start()
    sql(m, "UPDATE flowd_workers SET status = 'dead' WHERE worker_id = 'wa'")
    w.run_once(after(utcnow(), 60))
    assert worker_status(m, "wa") is WorkerStatus.ACTIVE and not w.standby


def test_heartbeat__fenced_by_attempt_even_for_the_same_worker(db_url: str, make_manager: Make) -> None:
    from flowd.engine import ops
    from flowd.registry import leases
    from flowd.store import tasks as task_store

    m = make_manager(db_url)
    m.use("job", lambda t: None)
    tid = m.submit("job", {})
    now = utcnow()
    (first,) = ops.claim(m.db, "wa", {"job": 1}, 1, now)
    assert leases.recover_tasks(m.db, ["wa"], {"wa": "dead"}, "wb", now) == [tid]
    (second,) = ops.claim(m.db, "wa", {"job": 1}, 1, now)  # the same worker, back from a freeze
    assert (first.attempt, second.attempt) == (1, 2)
    sql(m, "UPDATE flowd_tasks SET heartbeat_at = 0 WHERE id = :id", id=tid)  # aged: the epoch
    later = after(now, 1)
    with m.db.write() as conn:
        assert task_store.heartbeat(conn, "wa", [(tid, 1)], later) == 0, "the old attempt keeps nothing alive"
    hb = m.get_task(tid).heartbeat_at
    assert hb is not None and hb.timestamp() == 0
    with m.db.write() as conn:
        assert task_store.heartbeat(conn, "wa", [(tid, 2)], later) == 1
    assert m.get_task(tid).heartbeat_at == later


def test_recoverer_died_after_superseding__next_heartbeat_of_any_worker_recovers(
    db_url: str, make_manager: Make
) -> None:
    gate = Gate()
    _ma, _mb, _wa, tid = two_workers(db_url, make_manager, gate, lambda t: "late")
    # what a new pod-a instance leaves behind if it dies right after marking wa superseded
    sql(_ma, "UPDATE flowd_workers SET status = 'superseded' WHERE worker_id = 'wa'")
    assert _ma.get_task(tid).status is TaskStatus.RUNNING
    mc = make_manager(db_url, pod_id="c", worker_id="wc")
    mc.use("job", gate.handler(lambda t: None))
    wc = mc.make_worker()
    wc.start()
    t = mc.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.retry_count == 0
    rec = mc.task_audit(tid, event_types=["task_recovered"])["events"]["items"]
    assert [e["metadata"]["recovery_reason"] for e in rec] == ["superseded"]
    assert rec[0]["worker_id"] == "wc" and rec[0]["attempt"] == 1
    wc.run_once(after(utcnow(), 1))  # a later heartbeat finds nothing more to recover
    assert len(mc.task_audit(tid, event_types=["task_recovered"])["events"]["items"]) == 1
    gate.release.set()


def test_lease_lost__no_claim_until_the_worker_is_active_again(db_url: str, make_manager: Make) -> None:
    m = make_manager(db_url, pod_id="a", worker_id="wa", worker_heartbeat_interval=60)
    m.use("job", lambda t: t.worker_id)
    w: Worker = m.make_worker()
    w.start()
    sql(m, "UPDATE flowd_workers SET status = 'dead' WHERE worker_id = 'wa'")  # reaped while frozen
    tid = m.submit("job", {})
    now = utcnow()
    w.run_once(now)  # its lease check is not due yet: the claim itself is fenced by the lease
    t = m.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.attempt == 0
    w.run_once(after(now, 61))  # heartbeat: lease lost, no peer in pod a → re-register, claim
    w.run_until_idle()
    assert m.get_task(tid).result == "wa"


def wa_running_and_wc_started(db_url: str, make: Make, gate: Gate, max_retries: int, **kw: Any) -> tuple[Any, ...]:
    """wa (pod a) runs a gated task; wc (pod c) is registered; returns (mc, wc, task id, t1)."""
    ma = make(db_url, pod_id="a", worker_id="wa", **kw)
    ma.use("job", gate.handler(lambda t: "late"))
    tid = ma.submit("job", {}, max_retries=max_retries)
    ma.make_worker().run_once()
    assert gate.started.wait(10)
    mc = make(db_url, pod_id="c", worker_id="wc", **kw)
    mc.use("job", lambda t: "from wc")
    wc = mc.make_worker()
    wc.start()
    return mc, wc, tid, after(utcnow(), 1)


def age_wa(m: TaskManager, tid: int, task_heartbeat: datetime, seen: datetime, expires: datetime) -> None:
    sql(m, "UPDATE flowd_tasks SET heartbeat_at = :hb WHERE id = :id", hb=to_ms(task_heartbeat), id=tid)
    sql(
        m,
        "UPDATE flowd_workers SET last_seen_at = :seen, expires_at = :exp WHERE worker_id = 'wa'",
        seen=to_ms(seen),
        exp=to_ms(expires),
    )


def test_dead_pod_worker__its_stale_task_waits_for_the_lease_and_keeps_its_attempt(
    db_url: str, make_manager: Make
) -> None:
    # defaults: task heartbeat and lease both time out after 30 s, on separate schedules, so a
    # dead worker's task heartbeat can go stale a few seconds before its lease expires
    gate = Gate()
    mc, wc, tid, t1 = wa_running_and_wc_started(
        db_url, make_manager, gate, 1, task_heartbeat_timeout=30, worker_heartbeat_timeout=30
    )
    # wa died: its last task heartbeat 30.5 s ago, its last lease renewal 27.5 s ago
    age_wa(mc, tid, after(t1, -30.5), after(t1, -27.5), after(t1, 2.5))
    wc.run_once(t1)
    assert mc.get_task(tid).status is TaskStatus.RUNNING, "left to the registry: the lease has not expired yet"
    wc.run_once(after(t1, 3))  # the lease has expired: reaped, recovered (and claimed again)
    wc.run_until_idle()
    t = mc.get_task(tid)
    assert t.status is TaskStatus.COMPLETED and t.result == "from wc" and t.retry_count == 0
    assert outcomes(mc, tid) == ["interrupted", "completed"]
    gate.release.set()


def test_stuck_attempt_of_a_live_pod_worker__timed_out_by_its_heartbeat(db_url: str, make_manager: Make) -> None:
    gate = Gate()
    mc, wc, tid, t1 = wa_running_and_wc_started(db_url, make_manager, gate, 2)
    # wa renews its lease (it is alive) but this attempt's heartbeat stopped 6 s ago (timeout 5)
    age_wa(mc, tid, after(t1, -6), t1, after(t1, 2))
    wc.run_once(t1)  # times the attempt out (and claims the retry)
    assert mc.get_task(tid).retry_count == 1
    assert outcomes(mc, tid)[0] == "timeout"
    gate.release.set()


# -- crashes that repeat: max_recoveries ------------------------------------------------

HOOKS = """
import json
from flowd import on

@on("task_permanently_failed")
@on("task_paused")
@on("task_resumed")
def note(event):
    with open({out!r}, "a") as f:
        keys = ("event_type", "task_id", "metadata", "error")
        f.write(json.dumps({{k: event[k] for k in keys if k in event}}) + "\\n")
"""


class Deaths:
    """Workers that claim a task and die with it; a survivor (pod c) reaps and recovers them.

    Each doomed worker has a pod of its own, claims through the real claim and is then aged
    (its lease expired at the epoch): the survivor's next heartbeat marks it dead and
    recovers its task, as after a SIGKILL. The survivor has no handler for the task, so it
    never runs it itself; it does run the plugin's hooks.
    """

    def __init__(self, db_url: str, make: Make, tmp: Any, **kw: Any) -> None:
        self.out = tmp / "hooks.jsonl"
        (tmp / "handlers" / "hooks.py").write_text(HOOKS.format(out=str(self.out)))
        self.m = make(db_url, **kw)
        self.m.use("job", lambda t: "done")
        self.survivor = make(db_url, pod_id="c", worker_id="wc", **kw)
        self.wc = self.survivor.make_worker()
        self.wc.start()
        self.now = utcnow()
        self.n = 0

    def die_running(self, tid: int, name: str = "job") -> None:
        from flowd.engine import ops
        from flowd.registry import leases

        self.n += 1
        self.now = after(self.now, 1)
        wid = f"doomed{self.n}"
        leases.register(self.m.db, leases.Identity(wid, f"p{self.n}", "host", 1), [name], 30, self.now, recover=None)
        (t,) = ops.claim(self.m.db, wid, {name: 1}, 1, self.now)
        assert t.id == tid
        sql(self.m, "UPDATE flowd_workers SET expires_at = 0 WHERE worker_id = :w", w=wid)
        self.wc.run_once(self.now)  # its heartbeat is due: reaps the doomed worker, recovers

    def hooks(self, n: int) -> list[dict[str, Any]]:
        import json
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = self.out.read_text().splitlines() if self.out.exists() else []
            if len(lines) >= n:
                return [json.loads(x) for x in lines]
            time.sleep(0.02)
        raise AssertionError(f"{n} hook calls expected, got {self.out.read_text() if self.out.exists() else 0}")


def test_worker_died_max_recoveries_times_in_a_row__task_ends_permanently_failed(
    db_url: str, make_manager: Make, tmp_path: Any
) -> None:
    d = Deaths(db_url, make_manager, tmp_path)
    tid = d.m.submit("job", {}, max_retries=2)
    d.die_running(tid)
    d.die_running(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.recoveries == 2 and t.retry_count == 0
    d.die_running(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED and t.retry_count == 0
    assert t.error is not None and "its worker died 3 times while running it" in t.error
    assert outcomes(d.m, tid) == ["interrupted"] * 3, "recovery still uses up no attempt"
    assert event_types(d.m, tid)[-1] == "task_permanently_failed"
    assert len(d.m.task_audit(tid, event_types=["task_recovered"])["events"]["items"]) == 2
    (ev,) = d.m.task_audit(tid, event_types=["task_permanently_failed"])["events"]["items"]
    assert ev["from_status"] == "running" and ev["worker_id"] == "wc"
    assert ev["metadata"] == {
        "reason": "recoveries_exhausted",
        "recoveries": 3,
        "max_recoveries": 3,
        "recovered_from_worker_id": "doomed3",
        "recovered_by_worker_id": "wc",
        "recovery_reason": "dead",
    }
    (hook,) = d.hooks(1)
    assert hook["event_type"] == "task_permanently_failed" and hook["task_id"] == tid
    assert hook["metadata"]["reason"] == "recoveries_exhausted" and "died 3 times" in hook["error"]
    assert d.m.task_audit(tid)["task"]["recoveries"] == 3


def test_max_recoveries__a_normal_end_of_an_attempt_starts_the_run_again_a_hand_back_is_no_death(
    db_url: str, make_manager: Make, tmp_path: Any
) -> None:
    from flowd.engine import ops
    from flowd.registry import leases

    d = Deaths(db_url, make_manager, tmp_path, max_recoveries=2)
    tid = d.m.submit("job", {}, max_retries=5)
    d.die_running(tid)
    assert d.m.get_task(tid).recoveries == 1
    # an attempt that fails by itself (a retry follows) ends the run of deaths
    (t,) = ops.claim(d.m.db, "wx", {"job": 1}, 1, after(d.now, 0.5))
    assert ops.finish(d.m.db, t, ops.Failure("boom"), after(d.now, 0.5))
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.recoveries == 0 and t.retry_count == 1
    # a worker that hands its attempt back on SIGTERM did not die: no count
    (t,) = ops.claim(d.m.db, "wx", {"job": 1}, 1, after(d.now, 0.6))
    policy = leases.Recovery(max_recoveries=2)
    assert leases.recover_tasks(d.m.db, ["wx"], {"wx": "shutdown"}, "wx", after(d.now, 0.7), policy) == [tid]
    assert d.m.get_task(tid).recoveries == 0
    d.die_running(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.recoveries == 1
    d.die_running(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED and t.error is not None and "died 2 times" in t.error
    assert outcomes(d.m, tid) == ["interrupted", "failed", "interrupted", "interrupted", "interrupted"]
    # a manual resume gives the task a fresh budget of deaths as well as of attempts
    d.m.resume_task(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PENDING and t.recoveries == 0 and t.retry_count == 0


def test_max_recoveries__a_cron_task_is_paused(db_url: str, make_manager: Make, tmp_path: Any) -> None:
    d = Deaths(db_url, make_manager, tmp_path, max_recoveries=1)
    tid = d.m.cron("job", "* * * * * *", {})
    d.now = after(d.now, 2)  # its first occurrence is due
    d.die_running(tid)
    t = d.m.get_task(tid)
    assert t.status is TaskStatus.PAUSED and t.error is not None and "its worker died 1 times" in t.error
    (ev,) = d.m.task_audit(tid, event_types=["task_paused"])["events"]["items"]
    assert ev["metadata"]["reason"] == "recoveries_exhausted" and ev["from_status"] == "running"
    (hook,) = d.hooks(1)
    assert hook["event_type"] == "task_paused" and hook["metadata"]["recovery_reason"] == "dead"


def test_max_recoveries__a_child_given_up_resumes_its_parent(db_url: str, make_manager: Make, tmp_path: Any) -> None:
    d = Deaths(db_url, make_manager, tmp_path, max_recoveries=1)
    d.m.use("parent", lambda t: SubTasks([{"name": "job"}]) if t.stage == 0 else [c["status"] for c in t.children()])
    pid = d.m.submit("parent", {})
    w = d.m.make_worker()
    w.run_once()  # claims the parent only: the child does not exist yet
    w.pause()
    w.run_until_idle()  # writes the SubTasks outcome, claims nothing
    (child,) = d.m.query_tasks(parent_id=pid).items
    assert d.m.get_task(pid).status is TaskStatus.SUSPENDED
    d.die_running(child.id)
    assert d.m.get_task(child.id).status is TaskStatus.PERMANENTLY_FAILED
    p = d.m.get_task(pid)
    assert p.status is TaskStatus.PENDING and p.stage == 1, "a child that ended counts as finished"
    sql(d.m, "UPDATE flowd_tasks SET next_run_time = 0 WHERE id = :id", id=pid)  # due now, by the real clock
    w.resume()
    w.run_until_idle()
    assert d.m.get_task(pid).result == ["permanently_failed"]
    assert [h["event_type"] for h in d.hooks(2)] == ["task_permanently_failed", "task_resumed"]
