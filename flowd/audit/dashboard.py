"""The data of `flowd top`: one consistent read of workers, queue, throughput, running, failures.

Every query is bounded so the dashboard can refresh every second on a busy database:
grouped counts over indexes, a one-minute range of events, the running tasks (capped),
and failures among the newest events only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowd.clock import after, iso, seconds_between
from flowd.model import EventType
from flowd.store import events as event_store
from flowd.store import tasks as task_store
from flowd.store import workers as worker_store
from flowd.store.db import Database

# Events that end an attempt (from `running`), and which of them are failures.
ENDED = (
    EventType.TASK_COMPLETED,
    EventType.TASK_STATUS_CHANGED,  # a cron run that succeeded
    EventType.TASK_SUBTASKS_CREATED,
    EventType.TASK_SUSPENDED,
    EventType.TASK_FAILED,
    EventType.TASK_TIMED_OUT,
)
FAILED = (EventType.TASK_FAILED, EventType.TASK_TIMED_OUT)
# "Recent" failures are looked for among this many newest events: a bounded scan.
FAILURE_SCAN = 20_000


def snapshot(
    db: Database,
    now: datetime,
    *,
    window: float = 60.0,
    bucket: float = 5.0,
    running_limit: int = 50,
    failure_limit: int = 10,
) -> dict[str, Any]:
    """A plain dict (JSON-ready) of everything `flowd top` shows."""
    since = after(now, -window)
    n_buckets = max(1, round(window / bucket))
    bucket_ms = max(1, round(bucket * 1000))
    with db.read() as conn:
        running_by_worker = task_store.running_counts(conn)
        workers = worker_store.query(conn, running_by_worker, "active", 100, 0).items
        depth = task_store.queue_depth(conn)
        ended = event_store.ended_per_bucket(conn, [e.value for e in ENDED], since, bucket_ms)
        running = task_store.running(conn, running_limit)
        failures = event_store.recent_of_types(conn, [e.value for e in FAILED], failure_limit, FAILURE_SCAN)
        names = task_store.names_of(conn, [e.task_id for e in failures])

    done = [0] * n_buckets
    failed = [0] * n_buckets
    failed_types = {e.value for e in FAILED}
    for start_ms, event_type, count in ended:
        i = min(max(start_ms // bucket_ms, 0), n_buckets - 1)  # an event at exactly `now` joins the last
        (failed if event_type in failed_types else done)[i] += count

    return {
        "generated_at": iso(now),
        "workers": [
            {
                "worker_id": w.worker_id,
                "pod_id": w.pod_id,
                "host": w.host,
                "pid": w.pid,
                "running_tasks": w.running_tasks,
                "last_seen_seconds": seconds_between(w.last_seen_at, now),
                "lease_left_seconds": seconds_between(now, w.expires_at),
                "handlers": w.handlers,
            }
            for w in workers
        ],
        "queue": [{"name": n, "status": s, "count": c} for n, s, c in sorted(depth)],
        "throughput": {
            "window_seconds": window,
            "bucket_seconds": bucket,
            "ended": [d + f for d, f in zip(done, failed, strict=True)],
            "failed": failed,
            "total": sum(done) + sum(failed),
            "per_second": round((sum(done) + sum(failed)) / window, 3),
        },
        "running": [
            {
                "id": t.id,
                "name": t.name,
                "worker_id": t.worker_id,
                "attempt": t.attempt,
                "stage": t.stage,
                "stage_name": t.current_stage_name,
                "progress_percent": t.progress_percent,
                "progress_text": t.progress_text,
                "elapsed_seconds": seconds_between(t.started_at, now),
            }
            for t in running
        ],
        "failures": [
            {
                "task_id": e.task_id,
                "name": names.get(e.task_id),
                "event_type": e.event_type,
                "attempt": e.attempt,
                "worker_id": e.worker_id,
                "error": e.message,
                "at": iso(e.created_at),
            }
            for e in failures
        ],
    }


def overview(db: Database, now: datetime, *, minutes: int = 15, cron_limit: int = 100) -> dict[str, Any]:
    """The web overview as one plain dict: counts by status, attempts ended a minute over the
    last `minutes`, the oldest due pending task, active workers, cron schedules and their next run."""
    from flowd.rules.shapes import task_json, worker_json
    from flowd.store.tasks import TaskFilter

    since = after(now, -60.0 * minutes)
    with db.read() as conn:
        depth = task_store.queue_depth(conn)
        ended = event_store.ended_per_bucket(conn, [e.value for e in ENDED], since, 60_000)
        oldest = task_store.oldest_due(conn, now)
        workers = worker_store.query(conn, task_store.running_counts(conn), "active", 100, 0).items
        crons = task_store.query(conn, TaskFilter(type="cron"), cron_limit, 0, "asc").items
    counts: dict[str, int] = {}
    for _name, status, n in depth:
        counts[status] = counts.get(status, 0) + n
    completed = [0] * minutes
    failed = [0] * minutes
    failed_types = {e.value for e in FAILED}
    for start_ms, event_type, n in ended:
        i = min(max(start_ms // 60_000, 0), minutes - 1)
        (failed if event_type in failed_types else completed)[i] += n
    return {
        "generated_at": iso(now),
        "status_counts": dict(sorted(counts.items())),
        "total": sum(counts.values()),
        # per minute, oldest first; "completed" counts every good end of an attempt
        "throughput": {"minutes": minutes, "completed": completed, "failed": failed},
        "oldest_due": None
        if oldest is None
        else {**task_json(oldest), "waiting_seconds": seconds_between(oldest.next_run_time, now)},
        "workers": [worker_json(w) for w in workers],
        "cron": [task_json(t) for t in crons],
    }
