"""The task state machine of SEMANTICS.md as pure functions.

Each function takes a task snapshot, the outcome and `now`, and returns a `Transition`:
the statuses the row must still be in, the fields to write, the audit events, and what
happens to the attempt row. The store applies it in one conditional UPDATE (fenced by
worker id and attempt number when `fenced`), so a transition that no longer applies
changes nothing. No I/O here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowd.clock import after, iso
from flowd.limits import MAX_SECONDS
from flowd.model import AttemptOutcome, EventType, TaskRecord, TaskStatus, TaskType, WorkerRecord, WorkerStatus
from flowd.rules.cron import next_fire

S = TaskStatus


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An audit event a transition writes."""

    type: EventType
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    message: str | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """What one state change writes; applied atomically by `store.tasks.apply_transition`."""

    expected: frozenset[TaskStatus]
    to_status: TaskStatus
    values: Mapping[str, Any]
    events: tuple[EventSpec, ...]
    close_attempt: AttemptOutcome | None = None
    attempt_error: str | None = None
    fenced: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finishes_child(self) -> bool:
        """True when the task ends completed or permanently_failed (a parent may resume)."""
        return self.to_status in (S.COMPLETED, S.PERMANENTLY_FAILED)


class Refused(Exception):
    """The transition is not allowed from the task's current status."""


def _require(task: TaskRecord, allowed: frozenset[TaskStatus], action: str) -> None:
    if task.status not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise Refused(f"cannot {action} task {task.id}: it is {task.status.value} (allowed from: {names})")


def _run_of_deaths_ends(task: TaskRecord) -> dict[str, Any]:
    """An attempt that ended by itself (not by its worker's death) ends the run of deaths."""
    return {"recoveries": 0} if task.recoveries else {}


def claimed_events(task: TaskRecord) -> tuple[EventSpec, ...]:
    """Events of a claim; `task` is the row as it is after the claim (status running).

    One `task_started` (pending → running, by the claiming worker) stands for the claim and
    the start, which happen in the same transaction; a retry adds `task_retry_started`.
    """
    meta = {"attempt": task.attempt, "retry_count": task.retry_count}
    events = [EventSpec(EventType.TASK_STARTED, S.PENDING, S.RUNNING, f"started by {task.worker_id}", meta)]
    if task.retry_count > 0:
        events.append(EventSpec(EventType.TASK_RETRY_STARTED, S.RUNNING, S.RUNNING, f"retry {task.retry_count}", meta))
    return tuple(events)


def succeed(task: TaskRecord, result: Any, now: datetime, *, complete_progress: bool = False) -> Transition:
    """The handler returned a value: async → completed; cron → pending at its next occurrence.

    `complete_progress` (a handler with declared steps) also sets progress to 100 %.
    """
    _require(task, frozenset({S.RUNNING}), "complete")
    progress: dict[str, Any] = {"progress_percent": 100.0} if complete_progress else {}
    progress.update(_run_of_deaths_ends(task))
    if task.type is TaskType.CRON:
        assert task.cron_expr is not None
        nxt = next_fire(task.cron_expr, task.cron_tz, now)
        return Transition(
            expected=frozenset({S.RUNNING}),
            to_status=S.PENDING,
            values={
                "result": result,
                "error": None,
                "retry_count": 0,
                "stage": 0,
                "context": None,
                "next_run_time": nxt,
                **progress,
            },
            events=(
                EventSpec(
                    EventType.TASK_STATUS_CHANGED,
                    S.RUNNING,
                    S.PENDING,
                    "cron run completed; next occurrence scheduled",
                    {"cron_run": "completed", "next_run_time": iso(nxt)},
                ),
            ),
            close_attempt=AttemptOutcome.COMPLETED,
            fenced=True,
        )
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=S.COMPLETED,
        values={"result": result, "error": None, **progress},
        events=(EventSpec(EventType.TASK_COMPLETED, S.RUNNING, S.COMPLETED),),
        close_attempt=AttemptOutcome.COMPLETED,
        fenced=True,
    )


def has_attempts_left(task: TaskRecord) -> bool:
    """`max_retries` counts total attempts: retry while `retry_count + 1 < max_retries`."""
    return task.retry_count + 1 < task.max_retries


def retry_wait(task: TaskRecord) -> float:
    """Seconds the retry after this failed attempt waits (SEMANTICS §2, with the backoff options).

    `fixed`: `retry_interval`. `exponential`: `retry_interval * 2^(n-1)` after the n-th failed
    attempt (n = retry_count + 1), capped by `retry_max_interval`. With `retry_jitter` the wait
    is drawn uniformly from [w/2, w]; the draw is seeded by the task id and attempt number, so
    the rule stays a pure function (a replay gives the same wait) while tasks failing together
    spread out.
    """
    w = task.retry_interval
    if task.retry_backoff == "exponential":
        # the exponent is bounded so a large retry_count cannot overflow; the cap wins long before
        w = min(w * 2.0 ** min(task.retry_count, 1000), task.retry_max_interval)
    if task.retry_jitter and w > 0:
        u = random.Random(f"{task.id}:{task.attempt}").random()
        w = w / 2 + u * (w / 2)
    return w


def _after_failure(
    task: TaskRecord, failed_as: TaskStatus, error: str, now: datetime
) -> tuple[TaskStatus, dict[str, Any], EventSpec]:
    """Where a failed or timed-out attempt leads: a retry, permanent failure, or (cron) pause."""
    if has_attempts_left(task):
        retry_count = task.retry_count + 1
        wait = retry_wait(task)
        values: dict[str, Any] = {
            "retry_count": retry_count,
            # bounded: a row written before intervals were (flowd.limits) must not jam the worker
            "next_run_time": after(now, min(wait, MAX_SECONDS)),
            "stage": 0,
            "result": None,
            "context": None,
            "error": error,
        }
        event = EventSpec(
            EventType.TASK_RETRY_SCHEDULED,
            failed_as,
            S.PENDING,
            f"retry {retry_count} of {task.max_retries - 1} in {wait:g}s",
            {"retry_count": retry_count, "previous_status": failed_as.value, "wait": wait},
        )
        return S.PENDING, values, event
    if task.type is TaskType.CRON:
        event = EventSpec(
            EventType.TASK_PAUSED,
            failed_as,
            S.PAUSED,
            "cron task paused: attempts used up",
            {"reason": "attempts_exhausted"},
        )
        return S.PAUSED, {"error": error}, event
    event = EventSpec(
        EventType.TASK_PERMANENTLY_FAILED,
        failed_as,
        S.PERMANENTLY_FAILED,
        error,
        {"reason": "attempts_exhausted", "attempts": task.retry_count + 1},
    )
    return S.PERMANENTLY_FAILED, {"error": error}, event


def fail(
    task: TaskRecord,
    error: str,
    now: datetime,
    *,
    timed_out: bool = False,
    timeout_type: str = "handler",
    traceback: str | None = None,
    fenced: bool = True,
) -> Transition:
    """The attempt failed (raised) or timed out; the task is retried, failed or paused at once."""
    _require(task, frozenset({S.RUNNING}), "fail")
    failed_as = S.TIMEOUT if timed_out else S.FAILED
    if timed_out:
        first = EventSpec(EventType.TASK_TIMED_OUT, S.RUNNING, S.TIMEOUT, error, {"timeout_type": timeout_type})
    else:
        meta = {"traceback": traceback} if traceback else None
        first = EventSpec(EventType.TASK_FAILED, S.RUNNING, S.FAILED, error, meta)
    to_status, values, second = _after_failure(task, failed_as, error, now)
    values.update(_run_of_deaths_ends(task))
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=to_status,
        values=values,
        events=(first, second),
        close_attempt=AttemptOutcome.TIMEOUT if timed_out else AttemptOutcome.FAILED,
        attempt_error=error,
        fenced=fenced,
    )


def suspend_for_children(task: TaskRecord, context: bytes | None, child_count: int) -> Transition:
    """The handler returned SubTasks: suspend; the children are inserted in the same transaction."""
    _require(task, frozenset({S.RUNNING}), "suspend")
    values: dict[str, Any] = _run_of_deaths_ends(task)
    if context is not None:
        values["context"] = context
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=S.SUSPENDED,
        values=values,
        events=(
            EventSpec(
                EventType.TASK_SUBTASKS_CREATED,
                S.RUNNING,
                S.SUSPENDED,
                f"{child_count} subtasks created",
                {"count": child_count, "stage": task.stage},
            ),
        ),
        close_attempt=AttemptOutcome.SUSPENDED,
        fenced=True,
    )


def suspend(task: TaskRecord, reason: str, context: bytes | None) -> Transition:
    """The handler returned `task.suspend(reason)`: park until a manual resume or cancel."""
    _require(task, frozenset({S.RUNNING}), "suspend")
    values: dict[str, Any] = _run_of_deaths_ends(task)
    if context is not None:
        values["context"] = context
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=S.SUSPENDED,
        values=values,
        events=(EventSpec(EventType.TASK_SUSPENDED, S.RUNNING, S.SUSPENDED, reason, {"reason": reason}),),
        close_attempt=AttemptOutcome.SUSPENDED,
        fenced=True,
    )


def resume_after_children(parent: TaskRecord, now: datetime) -> Transition:
    """Every child of the parent's current stage has finished: run the next stage."""
    _require(parent, frozenset({S.SUSPENDED}), "resume")
    return Transition(
        expected=frozenset({S.SUSPENDED}),
        to_status=S.PENDING,
        values={"stage": parent.stage + 1, "next_run_time": now},
        events=(
            EventSpec(
                EventType.TASK_RESUMED,
                S.SUSPENDED,
                S.PENDING,
                "all children finished",
                {"resume_reason": "children_completed", "stage": parent.stage + 1},
            ),
        ),
        # the stage must still be the one whose children finished: resumes exactly once
        extra={"stage": parent.stage},
    )


PAUSABLE = frozenset({S.PENDING, S.RUNNING, S.FAILED, S.TIMEOUT})
RESUMABLE = frozenset({S.PAUSED, S.SUSPENDED, S.FAILED, S.TIMEOUT, S.PERMANENTLY_FAILED})
CANCELLABLE = frozenset({S.PENDING, S.PAUSED, S.SUSPENDED, S.FAILED, S.TIMEOUT})
RETRYABLE = frozenset({S.FAILED, S.TIMEOUT, S.PERMANENTLY_FAILED})


def pause(task: TaskRecord, reason: str | None = None) -> Transition:
    """Manual pause; a running attempt ends as `paused` and its late write is discarded."""
    _require(task, PAUSABLE, "pause")
    return Transition(
        expected=frozenset({task.status}),
        to_status=S.PAUSED,
        values={},
        events=(
            EventSpec(
                EventType.TASK_PAUSED,
                task.status,
                S.PAUSED,
                reason or "paused by operator",
                {"reason": reason or "manual"},
            ),
        ),
        close_attempt=AttemptOutcome.PAUSED if task.status is S.RUNNING else None,
        attempt_error="paused by operator" if task.status is S.RUNNING else None,
    )


def resume(task: TaskRecord, reason: str | None, now: datetime) -> Transition:
    """Manual resume: suspended → next stage; paused/failed → pending with a fresh retry budget."""
    _require(task, RESUMABLE, "resume")
    reason = reason or "manual"
    if task.status is S.SUSPENDED:
        return Transition(
            expected=frozenset({S.SUSPENDED}),
            to_status=S.PENDING,
            values={"stage": task.stage + 1, "next_run_time": now},
            events=(
                EventSpec(
                    EventType.TASK_RESUMED,
                    S.SUSPENDED,
                    S.PENDING,
                    reason,
                    {"resume_reason": reason, "stage": task.stage + 1},
                ),
            ),
            extra={"stage": task.stage},
        )
    values: dict[str, Any] = {"retry_count": 0, "next_run_time": now, **_run_of_deaths_ends(task)}
    if task.status is not S.PAUSED:
        # a failed task starts over, as a retry would
        values.update(stage=0, context=None, result=None)
    return Transition(
        expected=frozenset({task.status}),
        to_status=S.PENDING,
        values=values,
        events=(EventSpec(EventType.TASK_STATUS_CHANGED, task.status, S.PENDING, reason, {"resume_reason": reason}),),
    )


def retry(task: TaskRecord, reason: str | None, now: datetime) -> Transition:
    """Retry now: a failed, timed-out or permanently failed task back to pending, a fresh retry budget.

    The resume of a failed task, refused for any other status (a paused task is resumed, not retried).
    """
    _require(task, RETRYABLE, "retry")
    return resume(task, reason or "retried by operator", now)


def cancel(task: TaskRecord, reason: str | None) -> Transition:
    """Cancel: the task ends permanently_failed with the reason as its error."""
    _require(task, CANCELLABLE, "cancel")
    error = reason or "cancelled"
    return Transition(
        expected=frozenset({task.status}),
        to_status=S.PERMANENTLY_FAILED,
        values={"error": error},
        events=(
            EventSpec(
                EventType.TASK_PERMANENTLY_FAILED,
                task.status,
                S.PERMANENTLY_FAILED,
                error,
                {"reason": "cancelled", "cancel_reason": error},
            ),
        ),
    )


HAND_BACK = "shutdown"
"""The recovery reason of a graceful hand-back (SIGTERM past the grace period): not a death."""


def recover(
    task: TaskRecord, by_worker: str, reason: str, now: datetime, max_recoveries: int | None = None
) -> Transition:
    """A dead or superseded worker's running task goes back to pending, keeping its stage.

    Recovery does not use up an attempt: `retry_count` is unchanged. It counts the run of
    attempts interrupted by their worker's death (`reason` other than `HAND_BACK`): the
    `max_recoveries`-th in a row ends the task instead (`give_up_after_deaths`), so a handler
    that kills its worker cannot loop forever. A hand-back neither counts nor ends the run.
    """
    _require(task, frozenset({S.RUNNING}), "recover")
    deaths = task.recoveries if reason == HAND_BACK else task.recoveries + 1
    if max_recoveries is not None and reason != HAND_BACK and deaths >= max_recoveries:
        return give_up_after_deaths(task, by_worker, reason, deaths, max_recoveries)
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=S.PENDING,
        values={"next_run_time": now, "worker_id": None, "recoveries": deaths},
        events=(
            EventSpec(
                EventType.TASK_RECOVERED,
                S.RUNNING,
                S.PENDING,
                f"recovered from {task.worker_id} ({reason})",
                {
                    "recovered_from_worker_id": task.worker_id,
                    "recovered_by_worker_id": by_worker,
                    "recovery_reason": reason,
                },
            ),
        ),
        close_attempt=AttemptOutcome.INTERRUPTED,
        attempt_error=f"worker {task.worker_id} {reason}",
        fenced=True,
    )


def give_up_after_deaths(task: TaskRecord, by_worker: str, reason: str, deaths: int, limit: int) -> Transition:
    """The worker died `deaths` (= `limit`) times in a row while running the task: async →
    permanently_failed, cron → paused, with an error that says so; the attempt ends interrupted."""
    error = (
        f"its worker died {deaths} times while running it (max_recoveries = {limit}; last: {task.worker_id} {reason})"
    )
    meta = {
        "reason": "recoveries_exhausted",
        "recoveries": deaths,
        "max_recoveries": limit,
        "recovered_from_worker_id": task.worker_id,
        "recovered_by_worker_id": by_worker,
        "recovery_reason": reason,
    }
    if task.type is TaskType.CRON:
        to_status = S.PAUSED
        event = EventSpec(EventType.TASK_PAUSED, S.RUNNING, S.PAUSED, f"cron task paused: {error}", meta)
    else:
        to_status = S.PERMANENTLY_FAILED
        event = EventSpec(EventType.TASK_PERMANENTLY_FAILED, S.RUNNING, S.PERMANENTLY_FAILED, error, meta)
    return Transition(
        expected=frozenset({S.RUNNING}),
        to_status=to_status,
        values={"error": error, "recoveries": deaths},
        events=(event,),
        close_attempt=AttemptOutcome.INTERRUPTED,
        attempt_error=f"worker {task.worker_id} {reason}",
        fenced=True,
    )


def stall_left_to_registry(
    heartbeat_at: datetime, owner: WorkerRecord | None, heartbeat_timeout: float, *, recovering: bool
) -> bool:
    """Whether a running task with a stale heartbeat is the registry's to recover, not to time out.

    A registered worker's tasks are recovered when its lease is lost, without using up an
    attempt; timing them out first would race that (the task heartbeat and the lease run on
    separate schedules). So the heartbeat timeout only ends an attempt whose owner is
    unregistered (no pod id), or visibly alive — active and seen more than the timeout after
    the attempt's last heartbeat: a stuck attempt. Only for a sweeper that recovers at all.
    """
    if not recovering or owner is None:
        return False
    if owner.status is not WorkerStatus.ACTIVE:
        return True
    return owner.last_seen_at <= after(heartbeat_at, heartbeat_timeout)
