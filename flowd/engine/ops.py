"""Engine steps: each asks `rules` what to do and `store` to do it, in one transaction.

Used by the worker (claims, outcomes, timeouts) and by the manager (pause, resume,
cancel), so a manual resume and a child's completion go through the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowd.clock import iso
from flowd.engine import flows
from flowd.errors import NotFound, TransitionRefused
from flowd.logging import get_logger
from flowd.model import NewTask, TaskId, TaskRecord, TaskStatus
from flowd.rules import transitions as rules
from flowd.rules.transitions import EventSpec, Refused, Transition
from flowd.store import events as events_store
from flowd.store import tasks as store
from flowd.store import workers as workers_store
from flowd.store.db import Database
from flowd.store.tasks import Fence

log = get_logger("flowd.engine")


@dataclass(frozen=True, slots=True)
class Success:
    result: Any
    complete_progress: bool = False  # declared steps: success means 100 %


@dataclass(frozen=True, slots=True)
class Failure:
    error: str
    traceback: str | None = None
    timed_out: bool = False
    timeout_type: str = "handler"


@dataclass(frozen=True, slots=True)
class Children:
    news: Sequence[NewTask]
    context: bytes | None


@dataclass(frozen=True, slots=True)
class Suspend:
    reason: str
    context: bytes | None


Outcome = Success | Failure | Children | Suspend


@dataclass(frozen=True, slots=True)
class Written:
    """An event a step wrote, with the task it is about and the fields the step set (for hooks)."""

    task: TaskRecord
    event: EventSpec
    values: Mapping[str, Any]


Sink = list[Written] | None


def _note(sink: Sink, task: TaskRecord, tr: Transition) -> None:
    if sink is not None:
        sink.extend(Written(task, ev, tr.values) for ev in tr.events)


def claim(
    db: Database,
    worker_id: str,
    limits: Mapping[str, int],
    slots: int,
    now: datetime,
    versions: Mapping[str, str | None] | None = None,
    *,
    leased: bool = False,
    aging: float | None = None,
) -> list[TaskRecord]:
    """Claim due tasks (their attempts in progress, with the handler `versions`, live on the
    task rows) and write their `task_started` events: one transaction. With `leased` (a pod
    worker), nothing is claimed unless the worker's own registry row is still active."""

    def tx(conn: Any) -> list[TaskRecord]:
        if leased and not workers_store.holds_lease(conn, worker_id):
            return []
        claimed = store.claim_due(conn, worker_id, limits, slots, now, aging, versions)
        if claimed:
            rows: list[dict[str, Any]] = []
            for t in claimed:
                specs = rules.claimed_events(t)
                rows += events_store.event_rows(t, specs, worker_id=worker_id, attempt=t.attempt, stage=t.stage)
            events_store.insert_event_rows(conn, rows, now)
        return claimed

    return db.transaction(tx)


def due_count(db: Database, now: datetime) -> int:
    """How many pending tasks are due (the queue a worker sees)."""
    with db.read() as conn:
        return store.due_count(conn, now)


def queue_depth(db: Database, statuses: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
    """(name, status, count) for every name and status present (of `statuses`, when given)."""
    with db.read() as conn:
        return store.queue_depth(conn, statuses)


def _resume_parent_if_done(conn: Any, parent_id: int, stage: int, now: datetime, sink: Sink = None) -> bool:
    """Resume the parent when every child of `stage` has finished — at most once.

    The parent row is locked first, so two children finishing at the same moment on two
    workers are counted one after the other; the conditional UPDATE (suspended, same
    stage) makes a second resume a no-op.
    """
    parent = store.lock(conn, parent_id)
    if parent is None or parent.status is not TaskStatus.SUSPENDED or parent.stage != stage:
        return False
    if store.count_unfinished_children(conn, parent_id, stage) > 0:
        return False
    tr = rules.resume_after_children(parent, now)
    ok = store.apply_transition(conn, parent, tr, now)
    if ok:
        _note(sink, parent, tr)
        log.info("task_resumed", task_id=parent.id, name=parent.name, stage=stage + 1, reason="children_completed")
    return ok


def _moves_others(task: TaskRecord, tr: Transition) -> bool:
    """The task ends and a parent may resume or a flow move on: not for the batched write path."""
    return tr.finishes_child and (task.parent_id is not None or task.flow_id is not None)


def _after(conn: Any, task: TaskRecord, tr: Transition, now: datetime, sink: Sink = None) -> None:
    """What a task's final state moves on, in the same transaction: its parent, its flow."""
    if tr.finishes_child and task.parent_id is not None and task.parent_stage is not None:
        _resume_parent_if_done(conn, task.parent_id, task.parent_stage, now, sink)
    if tr.finishes_child and task.flow_id is not None:
        flows.on_step_final(conn, task, now)


def settle_recovered(conn: Any, task: TaskRecord, tr: Transition, now: datetime, sink: Sink = None) -> None:
    """After a recovery transition, in its transaction: note its events for the hooks; a task
    that ended there (its worker died `max_recoveries` times) moves its parent or flow on."""
    _note(sink, task, tr)
    _after(conn, task, tr, now, sink)


def finish(db: Database, task: TaskRecord, outcome: Outcome, now: datetime, sink: Sink = None) -> bool:
    """Write the outcome of a running attempt (fenced by worker and attempt); False if stale."""
    assert task.worker_id is not None
    fence = Fence(task.worker_id, task.attempt)
    written: list[Written] = []

    def tx(conn: Any) -> bool:
        written.clear()  # a retried transaction notes its events again
        return finish_in(conn, task, fence, outcome, now, written)

    ok = db.transaction(tx)
    if sink is not None:
        sink.extend(written)
    return ok


class StaleBatch(Exception):
    """An attempt of a `finish_many` batch is no longer its worker's: roll back, write one by one."""


def finish_many(
    conn: Any, items: Sequence[tuple[TaskRecord, Fence, Outcome]], now: datetime, sink: Sink = None
) -> list[bool]:
    """Write the outcomes of many running attempts in the caller's transaction; one bool each.

    Plain ends (completed, failed, retried, timed out — no children, no parent to resume)
    go through a few executemany statements; the rest one by one, as `finish_in`. Raises
    `StaleBatch` when a batched attempt was fenced off (the caller rolls back and falls back
    to `finish_in` per attempt, which reports each stale write).
    """
    plain: list[tuple[TaskRecord, Transition, Fence]] = []
    done: list[bool] = []
    for task, fence, outcome in items:
        tr = _transition(task, outcome, now)
        if (
            isinstance(outcome, Success | Failure)
            and store.batchable(tr)
            and not _moves_others(task, tr)
            and not task.constrained  # its keys are freed by apply_transition
            and task.entity_type is None  # its projection is written by apply_transition
        ):
            plain.append((task, tr, fence))
            done.append(True)
        else:
            done.append(finish_in(conn, task, fence, outcome, now, sink))
    if plain and not store.apply_fenced_batch(conn, plain, now):
        raise StaleBatch(f"{len(plain)} outcomes: at least one attempt is no longer this worker's")
    for task, tr, _fence in plain:
        _note(sink, task, tr)
    return done


def _transition(task: TaskRecord, outcome: Outcome, now: datetime) -> Transition:
    if isinstance(outcome, Success):
        tr = rules.succeed(task, outcome.result, now, complete_progress=outcome.complete_progress)
    elif isinstance(outcome, Failure):
        tr = rules.fail(
            task,
            outcome.error,
            now,
            timed_out=outcome.timed_out,
            timeout_type=outcome.timeout_type,
            traceback=outcome.traceback,
        )
    elif isinstance(outcome, Children):
        tr = rules.suspend_for_children(task, outcome.context, len(outcome.news))
    else:
        tr = rules.suspend(task, outcome.reason, outcome.context)
    return tr


def finish_in(conn: Any, task: TaskRecord, fence: Fence, outcome: Outcome, now: datetime, sink: Sink = None) -> bool:
    """Write an outcome in the caller's transaction; the events written are added to `sink`."""
    tr = _transition(task, outcome, now)
    if not store.apply_transition(conn, task, tr, now, fence=fence):
        return False
    _note(sink, task, tr)
    if isinstance(outcome, Children):
        store.insert_tasks(conn, outcome.news, now)
        # SubTasks([]) resumes at once; otherwise the last child to finish resumes it
        _resume_parent_if_done(conn, task.id, task.stage, now, sink)
    _after(conn, task, tr, now, sink)
    return True


def _manual(db: Database, task_id: int, make: Any, now: datetime, actor: str | None = None) -> TaskRecord:
    return db.transaction(lambda conn: _manual_in(conn, task_id, make, now, actor))


def _manual_in(conn: Any, task_id: int, make: Any, now: datetime, actor: str | None) -> TaskRecord:
    task = store.lock(conn, task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    try:
        tr = make(task)
    except Refused as e:
        raise TransitionRefused(str(e)) from e
    # a manual change is nobody's attempt: its events carry no worker id unless given
    if not store.apply_transition(conn, task, tr, now, actor=actor or ""):
        raise TransitionRefused(f"task {task_id} changed while being updated: try again")
    _after(conn, task, tr, now)
    updated = store.get(conn, task_id)
    assert updated is not None
    return updated


def pause_task(db: Database, task_id: int, now: datetime, reason: str | None = None) -> TaskRecord:
    return _manual(db, task_id, lambda t: rules.pause(t, reason), now)


def resume_task(db: Database, task_id: int, now: datetime, reason: str | None = None) -> TaskRecord:
    return _manual(db, task_id, lambda t: rules.resume(t, reason, now), now)


def retry_task(db: Database, task_id: int, now: datetime, reason: str | None = None) -> TaskRecord:
    return _manual(db, task_id, lambda t: rules.retry(t, reason, now), now)


def cancel_task(db: Database, task_id: int, now: datetime, reason: str | None = None) -> TaskRecord:
    return _manual(db, task_id, lambda t: rules.cancel(t, reason), now)


def time_out(db: Database, task: TaskRecord, now: datetime, timeout_type: str, error: str, sink: Sink = None) -> bool:
    """End a running attempt as `timeout` (its owner's deadline, or a stale heartbeat)."""
    return finish(db, task, Failure(error=error, timed_out=True, timeout_type=timeout_type), now, sink)


def sweep_stalled(
    db: Database, heartbeat_before: datetime, now: datetime, *, timeout: float, recovering: bool = False
) -> list[TaskId]:
    """Time out running tasks whose heartbeat is older than `heartbeat_before` (= now - `timeout`).

    With `recovering` (a sweeper that runs the registry's recovery), tasks of registered
    workers are left to it unless their owner is visibly alive (`rules.stall_left_to_registry`).
    """
    done: list[TaskId] = []
    with db.read() as conn:
        candidates = store.stalled(conn, heartbeat_before)

    def time_out_stalled(conn: Any, task_id: int) -> TaskRecord | None:
        task = store.lock(conn, task_id)
        if (
            task is None
            or task.status is not TaskStatus.RUNNING
            or task.heartbeat_at is None
            or task.heartbeat_at >= heartbeat_before
            or task.worker_id is None
        ):
            return None
        owner = workers_store.get_many(conn, [task.worker_id]).get(task.worker_id)
        if rules.stall_left_to_registry(task.heartbeat_at, owner, timeout, recovering=recovering):
            return None
        err = f"heartbeat stale since {iso(task.heartbeat_at)} (worker {task.worker_id})"
        fence = Fence(task.worker_id, task.attempt)
        ok = finish_in(conn, task, fence, Failure(err, timed_out=True, timeout_type="heartbeat"), now)
        return task if ok else None

    for cand in candidates:
        timed_out = db.transaction(functools.partial(time_out_stalled, task_id=cand.id))
        if timed_out is not None:
            done.append(timed_out.id)
            log.warning("task_timed_out", task_id=timed_out.id, name=timed_out.name, timeout_type="heartbeat")
    return done
