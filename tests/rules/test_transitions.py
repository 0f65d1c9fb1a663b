"""The state machine, exhaustively: every status and every action is allowed or refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowd.clock import iso
from flowd.model import AttemptOutcome, EventType, TaskId, TaskRecord, TaskStatus, TaskType, WorkerRecord, WorkerStatus
from flowd.rules import transitions as r

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
S = TaskStatus


def task(status: S = S.RUNNING, **kw: object) -> TaskRecord:
    base = TaskRecord(
        id=TaskId(7),
        name="t",
        type=TaskType.ASYNC,
        status=status,
        payload={},
        result=None,
        error=None,
        priority=0,
        tag=None,
        labels={},
        cron_expr=None,
        cron_tz=None,
        key=None,
        stage=0,
        context=None,
        parent_id=None,
        root_id=TaskId(7),
        parent_stage=None,
        retry_count=0,
        max_retries=3,
        retry_interval=0.0,
        timeout=60.0,
        next_run_time=NOW,
        worker_id="w1",
        attempt=1,
        started_at=NOW,
        heartbeat_at=NOW,
        current_stage_name=None,
        progress_text=None,
        progress_percent=None,
        last_event_type=None,
        last_event_time=None,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


ACTIONS = {
    "succeed": (lambda t: r.succeed(t, {"ok": 1}, NOW), {S.RUNNING}),
    "fail": (lambda t: r.fail(t, "boom", NOW), {S.RUNNING}),
    "suspend": (lambda t: r.suspend(t, "wait", None), {S.RUNNING}),
    "children": (lambda t: r.suspend_for_children(t, b"c", 2), {S.RUNNING}),
    "resume_after_children": (lambda t: r.resume_after_children(t, NOW), {S.SUSPENDED}),
    "pause": (lambda t: r.pause(t), {S.PENDING, S.RUNNING, S.FAILED, S.TIMEOUT}),
    "resume": (lambda t: r.resume(t, None, NOW), {S.PAUSED, S.SUSPENDED, S.FAILED, S.TIMEOUT, S.PERMANENTLY_FAILED}),
    "cancel": (lambda t: r.cancel(t, "no"), {S.PENDING, S.PAUSED, S.SUSPENDED, S.FAILED, S.TIMEOUT}),
    "recover": (lambda t: r.recover(t, "w2", "dead", NOW), {S.RUNNING}),
    "retry": (lambda t: r.retry(t, None, NOW), {S.FAILED, S.TIMEOUT, S.PERMANENTLY_FAILED}),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("status", list(S))
def test_every_action_from_every_status__allowed_or_refused(action: str, status: S) -> None:
    make, allowed = ACTIONS[action]
    t = task(status)
    if status in allowed:
        tr = make(t)
        assert status in tr.expected
        assert tr.events, "every transition writes at least one event"
    else:
        with pytest.raises(r.Refused):
            make(t)


def test_claimed_events__add_retry_started_only_on_retries() -> None:
    (started,) = r.claimed_events(task(worker_id="w1"))
    # one event for the claim and the start (one transaction): pending → running, by whom
    assert (started.type, started.from_status, started.to_status) == (EventType.TASK_STARTED, S.PENDING, S.RUNNING)
    assert started.message == "started by w1"
    retried = r.claimed_events(task(retry_count=2))
    assert [e.type for e in retried][-1] is EventType.TASK_RETRY_STARTED


def test_succeed_async__completes_and_closes_attempt_fenced() -> None:
    tr = r.succeed(task(), 0, NOW)
    assert tr.to_status is S.COMPLETED and tr.values["result"] == 0
    assert tr.close_attempt is AttemptOutcome.COMPLETED and tr.fenced
    assert tr.finishes_child


def test_succeed_cron__back_to_pending_at_next_occurrence_with_retry_count_reset() -> None:
    t = task(type=TaskType.CRON, cron_expr="*/10 * * * * *", cron_tz="UTC", retry_count=2, stage=3, context=b"x")
    tr = r.succeed(t, {"r": 1}, NOW + timedelta(seconds=3))
    assert tr.to_status is S.PENDING
    assert tr.values["next_run_time"] == NOW + timedelta(seconds=10)
    assert tr.values["retry_count"] == 0 and tr.values["stage"] == 0 and tr.values["context"] is None
    assert tr.close_attempt is AttemptOutcome.COMPLETED
    assert [e.type for e in tr.events] == [EventType.TASK_STATUS_CHANGED]
    assert tr.events[0].metadata == {"cron_run": "completed", "next_run_time": iso(NOW + timedelta(seconds=10))}
    assert str(tr.events[0].metadata["next_run_time"]).endswith(".000Z")
    assert not tr.finishes_child


@given(retry_count=st.integers(0, 20), max_retries=st.integers(1, 20), interval=st.floats(0, 3600))
def test_fail__retries_exactly_while_attempts_remain(retry_count: int, max_retries: int, interval: float) -> None:
    t = task(retry_count=retry_count, max_retries=max_retries, retry_interval=interval, stage=2, context=b"c")
    tr = r.fail(t, "boom", NOW)
    assert tr.events[0].type is EventType.TASK_FAILED
    assert tr.close_attempt is AttemptOutcome.FAILED and tr.attempt_error == "boom"
    if retry_count + 1 < max_retries:
        assert tr.to_status is S.PENDING
        assert tr.values["retry_count"] == retry_count + 1
        # exactly the interval, no doubling and no one-second floor
        delta = (tr.values["next_run_time"] - NOW).total_seconds()
        assert abs(delta - interval) < 0.002
        assert tr.values["stage"] == 0 and tr.values["context"] is None and tr.values["result"] is None
        assert tr.events[1].type is EventType.TASK_RETRY_SCHEDULED
        assert tr.events[1].metadata == {"retry_count": retry_count + 1, "previous_status": "failed", "wait": interval}
    else:
        assert tr.to_status is S.PERMANENTLY_FAILED
        assert tr.values["error"] == "boom"
        assert tr.events[1].type is EventType.TASK_PERMANENTLY_FAILED


def test_max_retries_one__means_one_run_and_no_retry() -> None:
    assert r.fail(task(max_retries=1), "x", NOW).to_status is S.PERMANENTLY_FAILED


def test_max_retries_three__means_exactly_three_runs() -> None:
    assert r.fail(task(retry_count=0, max_retries=3), "x", NOW).to_status is S.PENDING
    assert r.fail(task(retry_count=1, max_retries=3), "x", NOW).to_status is S.PENDING
    assert r.fail(task(retry_count=2, max_retries=3), "x", NOW).to_status is S.PERMANENTLY_FAILED


def test_cron_attempts_used_up__pauses_instead_of_failing() -> None:
    t = task(type=TaskType.CRON, cron_expr="* * * * *", retry_count=2, max_retries=3)
    tr = r.fail(t, "x", NOW)
    assert tr.to_status is S.PAUSED
    assert tr.events[-1].type is EventType.TASK_PAUSED


def test_timeout__records_type_and_retries() -> None:
    tr = r.fail(task(), "late", NOW, timed_out=True, timeout_type="heartbeat")
    assert tr.events[0].type is EventType.TASK_TIMED_OUT
    assert tr.events[0].metadata == {"timeout_type": "heartbeat"}
    assert tr.events[1].metadata == {"retry_count": 1, "previous_status": "timeout", "wait": 0.0}
    assert tr.close_attempt is AttemptOutcome.TIMEOUT


def test_subtasks__suspend_keeps_context_only_when_given() -> None:
    assert r.suspend_for_children(task(), b"ctx", 3).values == {"context": b"ctx"}
    assert r.suspend_for_children(task(), None, 3).values == {}
    tr = r.suspend_for_children(task(stage=1), None, 3)
    assert tr.to_status is S.SUSPENDED and tr.close_attempt is AttemptOutcome.SUSPENDED
    assert tr.events[0].type is EventType.TASK_SUBTASKS_CREATED


def test_resume_after_children__advances_stage_once() -> None:
    tr = r.resume_after_children(task(S.SUSPENDED, stage=1), NOW)
    assert tr.values["stage"] == 2 and tr.to_status is S.PENDING
    assert tr.extra == {"stage": 1}, "the UPDATE is conditional on the old stage: a second resume is a no-op"
    assert tr.events[0].metadata == {"resume_reason": "children_completed", "stage": 2}


def test_manual_resume_of_suspended__is_task_resumed_with_reason() -> None:
    tr = r.resume(task(S.SUSPENDED, stage=0), "approved", NOW)
    assert tr.values["stage"] == 1
    assert tr.events[0].type is EventType.TASK_RESUMED
    assert tr.events[0].metadata == {"resume_reason": "approved", "stage": 1}


@pytest.mark.parametrize("status", [S.PAUSED, S.FAILED, S.TIMEOUT, S.PERMANENTLY_FAILED])
def test_manual_resume__pending_now_with_fresh_retry_budget(status: S) -> None:
    tr = r.resume(task(status, retry_count=2), None, NOW)
    assert tr.to_status is S.PENDING
    assert tr.values["retry_count"] == 0 and tr.values["next_run_time"] == NOW
    assert tr.events[0].type is EventType.TASK_STATUS_CHANGED
    assert tr.events[0].metadata == {"resume_reason": "manual"}


def test_pause_running__closes_attempt_as_paused() -> None:
    assert r.pause(task(S.RUNNING)).close_attempt is AttemptOutcome.PAUSED
    assert r.pause(task(S.PENDING)).close_attempt is None


def test_cancel__permanently_failed_with_reason_as_error() -> None:
    tr = r.cancel(task(S.SUSPENDED), "abandoned")
    assert tr.to_status is S.PERMANENTLY_FAILED and tr.values == {"error": "abandoned"}
    assert tr.finishes_child


def test_retry__a_failure_starts_over_now_with_a_fresh_budget() -> None:
    tr = r.retry(task(S.PERMANENTLY_FAILED, stage=2, retry_count=3, error="boom"), None, NOW)
    assert tr.to_status is S.PENDING
    assert tr.values == {"retry_count": 0, "next_run_time": NOW, "stage": 0, "context": None, "result": None}
    assert tr.events[0].type is EventType.TASK_STATUS_CHANGED
    assert tr.events[0].metadata == {"resume_reason": "retried by operator"}
    refused = r"cannot retry task \d+: it is paused \(allowed from: failed, permanently_failed, timeout\)"
    with pytest.raises(r.Refused, match=refused):
        r.retry(task(S.PAUSED), None, NOW)


def test_recover__keeps_stage_and_retry_count_and_is_fenced() -> None:
    tr = r.recover(task(S.RUNNING, stage=2, retry_count=1, context=b"c"), "w2", "superseded", NOW)
    assert tr.to_status is S.PENDING and tr.fenced
    assert "stage" not in tr.values and "retry_count" not in tr.values and "context" not in tr.values
    assert tr.close_attempt is AttemptOutcome.INTERRUPTED
    assert tr.events[0].metadata == {
        "recovered_from_worker_id": "w1",
        "recovered_by_worker_id": "w2",
        "recovery_reason": "superseded",
    }


@pytest.mark.parametrize(
    ("type_", "recoveries", "reason", "limit", "to_status", "after"),
    [
        (TaskType.ASYNC, 0, "dead", 3, S.PENDING, 1),
        (TaskType.ASYNC, 1, "superseded", 3, S.PENDING, 2),
        (TaskType.ASYNC, 2, "dead", 3, S.PERMANENTLY_FAILED, 3),  # the third death in a row
        (TaskType.CRON, 2, "superseded", 3, S.PAUSED, 3),
        (TaskType.ASYNC, 0, "dead", 1, S.PERMANENTLY_FAILED, 1),
        (TaskType.ASYNC, 2, "shutdown", 3, S.PENDING, 2),  # a hand-back is no death: no count, no end
        (TaskType.ASYNC, 50, "dead", None, S.PENDING, 51),  # no limit given: recovered forever
    ],
)
def test_recover__the_max_recoveries_th_death_in_a_row_ends_the_task(
    type_: TaskType, recoveries: int, reason: str, limit: int | None, to_status: S, after: int
) -> None:
    cron = {"cron_expr": "* * * * *"} if type_ is TaskType.CRON else {}
    tr = r.recover(task(S.RUNNING, type=type_, recoveries=recoveries, **cron), "w2", reason, NOW, limit)
    assert tr.to_status is to_status and tr.values["recoveries"] == after
    assert tr.fenced and tr.close_attempt is AttemptOutcome.INTERRUPTED and "retry_count" not in tr.values
    if to_status is S.PENDING:
        assert [e.type for e in tr.events] == [EventType.TASK_RECOVERED]
        return
    (ev,) = tr.events
    assert ev.type is (EventType.TASK_PAUSED if type_ is TaskType.CRON else EventType.TASK_PERMANENTLY_FAILED)
    assert ev.from_status is S.RUNNING and ev.metadata is not None
    assert ev.metadata["reason"] == "recoveries_exhausted" and ev.metadata["recovery_reason"] == reason
    assert tr.values["error"].startswith(f"its worker died {after} times while running it")
    assert tr.finishes_child is (type_ is TaskType.ASYNC)


@pytest.mark.parametrize(
    "end",
    [
        lambda t: r.succeed(t, 1, NOW),
        lambda t: r.fail(t, "boom", NOW),
        lambda t: r.fail(replace(t, retry_count=2), "boom", NOW),
        lambda t: r.fail(t, "late", NOW, timed_out=True),
        lambda t: r.suspend(t, "approval", None),
        lambda t: r.suspend_for_children(t, None, 2),
    ],
)
def test_an_attempt_that_ends_by_itself__ends_the_run_of_deaths(end: object) -> None:
    assert callable(end)
    assert end(task(S.RUNNING, recoveries=2)).values["recoveries"] == 0
    assert "recoveries" not in end(task(S.RUNNING)).values, "nothing to reset: the hot path writes no more"


def _owner(status: WorkerStatus, seen_after_heartbeat: float) -> WorkerRecord:
    hb = datetime(2026, 1, 1, tzinfo=UTC)
    seen = hb + timedelta(seconds=seen_after_heartbeat)
    return WorkerRecord("w", "a", status, "h", 1, hb, seen, seen + timedelta(seconds=30), [])


@pytest.mark.parametrize(
    ("owner", "recovering", "left"),
    [
        (None, True, False),  # no pod id: the heartbeat timeout is the only way out
        (_owner(WorkerStatus.ACTIVE, 3), True, True),  # seen just after it: maybe dead, its lease decides
        (_owner(WorkerStatus.ACTIVE, 30), True, True),
        (_owner(WorkerStatus.ACTIVE, 31), True, False),  # alive well past the stall: a stuck attempt
        (_owner(WorkerStatus.DEAD, 3), True, True),
        (_owner(WorkerStatus.SUPERSEDED, 100), True, True),
        (_owner(WorkerStatus.DEAD, 3), False, False),  # recovery off: time it out
    ],
)
def test_stall_left_to_registry(owner: WorkerRecord | None, recovering: bool, left: bool) -> None:
    hb = datetime(2026, 1, 1, tzinfo=UTC)
    assert r.stall_left_to_registry(hb, owner, 30, recovering=recovering) is left
