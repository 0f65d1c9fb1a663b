"""Worker leases and the immediate recovery of a dead or superseded worker's tasks.

A worker with a pod id registers `active` with a lease. Starting a worker supersedes
every other active worker of its pod (a restart), and any worker reaps expired leases of
every pod. The running tasks of superseded and dead workers go back to `pending` at once
(attempt `interrupted`, event `task_recovered`), fenced by the old owner and attempt —
unless the task's worker has now died `max_recoveries` times in a row while running it: then
the task ends (permanently_failed, a cron task paused) instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowd.clock import after
from flowd.logging import get_logger
from flowd.model import TaskId, TaskRecord, TaskStatus, WorkerStatus
from flowd.rules import transitions as rules
from flowd.rules.transitions import Transition
from flowd.store import tasks as task_store
from flowd.store import workers as store
from flowd.store.db import Database
from flowd.store.tasks import Fence

log = get_logger("flowd.registry")


@dataclass(frozen=True, slots=True)
class Identity:
    worker_id: str
    pod_id: str
    host: str
    pid: int


Settle = Callable[[Any, TaskRecord, Transition, datetime], None]
"""Called in the transaction of each recovery transition applied, with (connection, task,
transition, now): the engine notes its events for the hooks and, when the task ended, moves
its parent or flow on in the same transaction."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """How this worker recovers the tasks of dead and superseded workers."""

    max_recoveries: int | None = None  # None: recover forever
    settle: Settle | None = None


@dataclass(slots=True)
class Sweep:
    """What a registration or heartbeat did."""

    superseded: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    recovered: list[TaskId] = field(default_factory=list)
    recovered_names: list[str] = field(default_factory=list)
    # tasks whose worker died max_recoveries times in a row: ended, not recovered
    given_up: list[TaskId] = field(default_factory=list)
    lease_held: bool = True
    standby: bool = False


def recover_tasks(
    db: Database,
    worker_ids: Sequence[str],
    reasons: dict[str, str],
    by_worker: str,
    now: datetime,
    policy: Recovery | None = None,
) -> list[TaskId]:
    """Send the running tasks of these workers back to pending; each one is fenced. Returns
    the ids sent back (not those `policy.max_recoveries` ended)."""
    policy = policy or Recovery()
    with db.write() as conn:
        found = [(t, reasons.get(t.worker_id or "", "dead")) for t in task_store.running_of_workers(conn, worker_ids)]
        done = _recover_in(conn, found, by_worker, now, policy)
    return [t.id for t, tr in done if tr.to_status is TaskStatus.PENDING]


def _recover_in(
    conn: Any, found: Sequence[tuple[TaskRecord, str]], by_worker: str, now: datetime, policy: Recovery
) -> list[tuple[TaskRecord, Transition]]:
    done: list[tuple[TaskRecord, Transition]] = []
    for task, reason in found:
        assert task.worker_id is not None
        tr = rules.recover(task, by_worker, reason, now, policy.max_recoveries)
        # fenced by the old owner and attempt: a task that finished or was recovered by a
        # peer in the meantime is left alone
        if not task_store.apply_transition(
            conn, task, tr, now, fence=Fence(task.worker_id, task.attempt), actor=by_worker
        ):
            continue
        if policy.settle is not None:
            policy.settle(conn, task, tr, now)
        done.append((task, tr))
        if tr.to_status is TaskStatus.PENDING:
            log.warning("task_recovered", task_id=task.id, recovered_by_worker_id=by_worker, recovery_reason=reason)
        else:
            log.error(
                "task_recoveries_exhausted",
                task_id=task.id,
                name=task.name,
                to_status=tr.to_status.value,
                recoveries=tr.values["recoveries"],
                recovered_by_worker_id=by_worker,
                recovery_reason=reason,
            )
    return done


def _recover_lost(db: Database, by_worker: str, now: datetime, policy: Recovery) -> list[tuple[TaskRecord, Transition]]:
    """Recover every running task whose registered owner is superseded or dead.

    Driven by the registry's state, not by what this call marked: a recoverer that died
    between superseding (or reaping) a worker and recovering its tasks leaves them to the
    next heartbeat of any worker. A cheap read first, so an idle fleet takes no write lock.
    A worker never recovers its own tasks: it is alive, and still runs them.
    """
    with db.read() as conn:
        if not task_store.running_of_lost_workers(conn, by_worker):
            return []
    with db.write() as conn:
        return _recover_in(conn, task_store.running_of_lost_workers(conn, by_worker), by_worker, now, policy)


def _reap_and_recover(
    db: Database, me: Identity, superseded: list[str], now: datetime, recover: Recovery | None
) -> Sweep:
    with db.write() as conn:
        dead = store.reap_expired(conn, now)
    sweep = Sweep(superseded=superseded, dead=dead)
    for w in superseded:
        log.info("worker_superseded", superseded_worker_id=w, by=me.worker_id)
    for w in dead:
        log.warning("worker_dead", dead_worker_id=w, reaped_by=me.worker_id)
    if recover is not None:
        for task, tr in _recover_lost(db, me.worker_id, now, recover):
            if tr.to_status is TaskStatus.PENDING:
                sweep.recovered.append(task.id)
                sweep.recovered_names.append(task.name)
            else:
                sweep.given_up.append(task.id)
    return sweep


def register(
    db: Database, me: Identity, handlers: Sequence[str], lease: float, now: datetime, *, recover: Recovery | None
) -> Sweep:
    """Register active, supersede the pod's other instances, reap expired, recover at once
    (`recover`: how; None leaves lost workers' tasks to their heartbeat timeout)."""
    with db.write() as conn:
        store.upsert_active(conn, me.worker_id, me.pod_id, me.host, me.pid, handlers, now, after(now, lease))
        superseded = store.supersede_pod(conn, me.pod_id, me.worker_id)
    return _reap_and_recover(db, me, superseded, now, recover)


def heartbeat(
    db: Database,
    me: Identity,
    handlers: Sequence[str],
    lease: float,
    now: datetime,
    *,
    recover: Recovery | None,
    standby: bool = False,
) -> Sweep:
    """Extend the lease; when it was lost, stand by while a live peer holds the pod, else re-register.

    `standby`: the worker already stands by (its last heartbeat found the lease lost), so
    the loss is not logged again: one line per change of state, not one per heartbeat.
    """
    with db.write() as conn:
        held = store.renew(conn, me.worker_id, now, after(now, lease), handlers)
        peer = None if held else store.active_peer_in_pod(conn, me.pod_id, me.worker_id, now)
    if not held:
        if peer is not None:
            if not standby:
                log.warning("worker_lease_lost", worker_id=me.worker_id, active_peer=peer)
            sweep = _reap_and_recover(db, me, [], now, recover)
            sweep.lease_held = False
            sweep.standby = True
            return sweep
        log.warning("worker_reregistered", worker_id=me.worker_id)
        return register(db, me, handlers, lease, now, recover=recover)
    return _reap_and_recover(db, me, [], now, recover)


def deregister(db: Database, me: Identity, now: datetime) -> None:
    """Mark this worker dead at the end of a clean shutdown."""
    with db.write() as conn:
        store.mark(conn, me.worker_id, WorkerStatus.DEAD, now)
