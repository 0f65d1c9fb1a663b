"""Schedules declared in code: `@handler("report", cron="0 7 * * *", tz=..., payload={...})`.

A worker serving such a handler makes its schedule exist — one cron task under the key
`handler:<name>` — at start and at each reload of its handlers. The upsert is idempotent
across the fleet: it runs under a fleet-wide lock (a row lock on the servers, the write lock
on SQLite), so two workers starting together make one schedule. A changed expression, zone,
payload or option updates the row; an unchanged declaration leaves it alone (its next run
stays). A handler that no longer declares `cron=` pauses its schedule (history kept); putting
`cron=` back resumes it at its next occurrence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flowd.logging import get_logger
from flowd.model import NewTask, TaskRecord, TaskStatus, TaskType
from flowd.plugins import HandlerSpec, Registry
from flowd.rules import constraints as cons
from flowd.rules import cron as cron_rules
from flowd.rules import options as opt
from flowd.rules import transitions as rules
from flowd.settings import Settings, task_defaults
from flowd.store import events as event_store
from flowd.store import tasks as task_store
from flowd.store import workers as worker_store
from flowd.store.db import Database

log = get_logger("flowd.schedules")

KEY_PREFIX = "handler:"
# the reason recorded when a schedule's handler stops declaring cron= (and the mark to resume it)
REMOVED = "schedule_removed_from_code"
_LOCK = "handler_schedules"


def schedule_key(name: str) -> str:
    """The key of the schedule `@handler(name, cron=...)` declares."""
    return KEY_PREFIX + name


def _desired(spec: HandlerSpec, schedule: Mapping[str, Any], settings: Settings, now: datetime) -> NewTask:
    options = opt.resolve(spec.options, task_defaults(settings))
    tz = schedule.get("tz") or settings.timezone or cron_rules.local_zone_name()
    payload = dict(schedule.get("payload") or {})
    return NewTask(
        name=spec.name,
        payload=payload,
        type=TaskType.CRON,
        priority=options.priority,
        cron_expr=schedule["cron"],
        cron_tz=tz,
        key=schedule_key(spec.name),
        max_retries=options.max_retries,
        retry_interval=options.retry_interval,
        retry_backoff=options.retry_backoff,
        retry_max_interval=options.retry_max_interval,
        retry_jitter=options.retry_jitter,
        timeout=options.timeout,
        next_run_time=cron_rules.next_fire(schedule["cron"], tz, now),
        constraints=tuple(cons.task_keys(spec.name, payload, {}, settings.constraints, spec.options)),
    )


def _changes(t: TaskRecord, new: NewTask) -> dict[str, Any]:
    """The fields of the schedule row that differ from the declaration."""
    want: dict[str, Any] = {
        "payload": new.payload,
        "cron_expr": new.cron_expr,
        "cron_tz": new.cron_tz,
        "priority": new.priority,
        "max_retries": new.max_retries,
        "retry_interval": new.retry_interval,
        "retry_backoff": new.retry_backoff,
        "retry_max_interval": new.retry_max_interval,
        "retry_jitter": new.retry_jitter,
        "timeout": new.timeout,
    }
    out = {k: v for k, v in want.items() if getattr(t, k) != v}
    if "cron_expr" in out or "cron_tz" in out:
        out["next_run_time"] = new.next_run_time  # the old occurrence belongs to the old expression
    return out


def _paused_by_removal(conn: Any, t: TaskRecord) -> bool:
    if t.status is not TaskStatus.PAUSED:
        return False
    f = event_store.EventFilter(task_id=t.id, event_types=["task_paused"])
    last = event_store.query(conn, f, 1, 0, "desc").items
    return bool(last) and (last[0].metadata or {}).get("reason") == REMOVED


def sync(db: Database, reg: Registry, settings: Settings, now: datetime) -> list[str]:
    """Make the schedules of `reg`'s handlers match their declarations; returns what changed."""

    def tx(conn: Any) -> list[str]:
        worker_store.lock_named(conn, _LOCK, now)
        existing = task_store.active_by_keys(conn, [schedule_key(n) for n in reg.names()], TaskType.CRON)
        changes: list[str] = []
        for name in reg.names():
            spec = reg.handlers[name]
            t = existing.get(schedule_key(name))
            schedule = spec.schedule
            if schedule is None:
                # `cron=` was removed: pause (a run in progress finishes; a later reload pauses it)
                if t is not None and t.status in (TaskStatus.PENDING, TaskStatus.FAILED, TaskStatus.TIMEOUT):
                    tr = rules.pause(t, REMOVED)
                    if task_store.apply_transition(conn, t, tr, now, actor=""):
                        changes.append(f"paused {t.key} (task {t.id})")
                continue
            new = _desired(spec, schedule, settings, now)
            if t is None:
                (tid,) = task_store.insert_tasks(conn, [new], now)
                changes.append(f"created {new.key} (task {tid})")
                continue
            fields = _changes(t, new)
            if _paused_by_removal(conn, t):
                # `cron=` is back: run again from the next occurrence
                tr = rules.resume(t, "schedule declared in code again", now)
                if task_store.apply_transition(conn, t, tr, now, actor=""):
                    fields["next_run_time"] = new.next_run_time
                    changes.append(f"resumed {t.key} (task {t.id})")
            if fields and task_store.update_fields(conn, t.id, fields, now):
                changes.append(f"updated {t.key} (task {t.id}): {', '.join(sorted(fields))}")
        return changes

    changes = db.transaction(tx)
    if changes:
        log.info("handler_schedules_synced", changes=changes)
    return changes
