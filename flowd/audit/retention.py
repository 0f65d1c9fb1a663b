"""Retention: delete old terminal tasks with their events and attempts, in batches.

A workflow is deleted whole, and only when every task of it is in a deletable status
and untouched for `expire_time`: suspended, pending and running tasks are never deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flowd.clock import after
from flowd.logging import get_logger
from flowd.store import tasks as store
from flowd.store import workers as worker_store
from flowd.store.db import Database

log = get_logger("flowd.retention")

DELETABLE = ("completed", "permanently_failed", "paused")


@dataclass(frozen=True, slots=True)
class Policy:
    expire_time: float = 86400.0
    statuses: tuple[str, ...] = ("completed", "permanently_failed")


@dataclass(frozen=True, slots=True)
class Result:
    tasks_deleted: int = 0
    events_deleted: int = 0
    attempts_deleted: int = 0

    def __add__(self, o: Result) -> Result:
        return Result(
            self.tasks_deleted + o.tasks_deleted,
            self.events_deleted + o.events_deleted,
            self.attempts_deleted + o.attempts_deleted,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "tasks_deleted": self.tasks_deleted,
            "events_deleted": self.events_deleted,
            "attempts_deleted": self.attempts_deleted,
        }


def run(
    db: Database, policy: Policy, now: datetime, batch: int = 500, on_batch: Callable[[int], None] | None = None
) -> Result:
    """Delete expired workflows/tasks batch by batch; each batch is one transaction.

    `on_batch(tasks deleted so far)` is called after each committed batch (progress display).
    """
    statuses = tuple(s for s in policy.statuses if s in DELETABLE)
    if not statuses:
        return Result()
    cutoff = after(now, -policy.expire_time)
    total = Result()
    after_id = 0
    while True:
        with db.write() as conn:
            roots = store.expired_roots(conn, statuses, cutoff, batch, after_id)
            if not roots:
                break
            after_id = max(roots)
            members = store.workflow_members(conn, roots)
            blocked = {root for (_t, root, status, updated) in members if status not in statuses or updated >= cutoff}
            ids = {tid for (tid, root, _s, _u) in members if root not in blocked}
            ids.update(r for r in roots if r not in blocked)
            n_t, n_e, n_a = store.delete(conn, sorted(ids))
        total = total + Result(n_t, n_e, n_a)
        if on_batch is not None:
            on_batch(total.tasks_deleted)
    if total.tasks_deleted:
        log.info("retention_ran", **total.as_dict())
    return total


def run_if_leader(db: Database, holder: str, policy: Policy, now: datetime, lease: float) -> Result | None:
    """Automatic retention in workers: only the holder of the fleet-wide lease runs it."""
    with db.write() as conn:
        if not worker_store.take_lease(conn, "retention", holder, now, after(now, lease)):
            return None
    return run(db, policy, now)
