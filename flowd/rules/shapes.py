"""The JSON shapes of CONTRACT §4, built from model records (pure)."""

from __future__ import annotations

from typing import Any

from flowd.clock import iso, seconds_between
from flowd.model import AttemptRecord, EventRecord, FlowRecord, HandlerRecord, Page, TaskRecord, WorkerRecord


def task_json(t: TaskRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "type": t.type.value,
        "status": t.status.value,
        "payload": t.payload,
        "result": t.result,
        "error": t.error,
        "priority": t.priority,
        "tag": t.tag,
        "labels": t.labels,
        "cron_expr": t.cron_expr,
        "cron_tz": t.cron_tz,
        "key": t.key,
        "stage": t.stage,
        "parent_id": t.parent_id,
        "root_id": t.root_id,
        "retry_count": t.retry_count,
        "max_retries": t.max_retries,
        "retry_interval": t.retry_interval,
        "retry_backoff": t.retry_backoff,
        "retry_max_interval": t.retry_max_interval,
        "retry_jitter": t.retry_jitter,
        "timeout": t.timeout,
        "next_run_time": iso(t.next_run_time),
        "worker_id": t.worker_id,
        "attempt": t.attempt,
        "recoveries": t.recoveries,
        "current_stage_name": t.current_stage_name,
        "progress_text": t.progress_text,
        "progress_percent": t.progress_percent,
        "last_event_type": t.last_event_type,
        "last_event_time": iso(t.last_event_time),
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "flow_id": t.flow_id,
        "flow_step": t.flow_step,
        "entity": {"type": t.entity_type, "id": t.entity_id} if t.entity_type else None,
    }


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "task_id": e.task_id,
        "root_id": e.root_id,
        "parent_id": e.parent_id,
        "event_type": e.event_type,
        "worker_id": e.worker_id,
        "attempt": e.attempt,
        "stage": e.stage,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "message": e.message,
        "metadata": e.metadata if e.metadata is not None else {},
        "created_at": iso(e.created_at),
    }


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "task_id": a.task_id,
        "attempt": a.attempt,
        "stage": a.stage,
        "worker_id": a.worker_id,
        "started_at": iso(a.started_at),
        "ended_at": iso(a.ended_at),
        "duration": seconds_between(a.started_at, a.ended_at),
        "outcome": a.outcome.value if a.outcome else None,
        "error": a.error,
        "handler_version": a.handler_version,
    }


def worker_json(w: WorkerRecord) -> dict[str, Any]:
    return {
        "worker_id": w.worker_id,
        "pod_id": w.pod_id,
        "status": w.status.value,
        "host": w.host,
        "pid": w.pid,
        "registered_at": iso(w.registered_at),
        "last_seen_at": iso(w.last_seen_at),
        "expires_at": iso(w.expires_at),
        "running_tasks": w.running_tasks,
        "handlers": w.handlers,
    }


def handler_json(h: HandlerRecord) -> dict[str, Any]:
    return {
        "name": h.name,
        "worker_id": h.worker_id,
        "version": h.version,
        "source": h.source,
        "options": h.options,
        "published_at": iso(h.published_at),
        "expires_at": iso(h.expires_at),
    }


def page_json(page: Page, item: Any) -> dict[str, Any]:
    return {
        "items": [item(x) for x in page.items],
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
        "has_more": page.has_more,
    }


def flow_json(flow: FlowRecord, steps: list[TaskRecord], join: TaskRecord | None) -> dict[str, Any]:
    """`flowd flow show --json`: the flow, its policy outcome, each step's state, the join task."""
    from flowd.rules.flows import outcome

    return {
        "id": flow.id,
        "kind": flow.kind,
        "name": flow.name,
        "status": flow.status,
        "outcome": outcome(flow),
        "failure_policy": flow.failure_policy,
        "deadline": iso(flow.deadline),
        "step_count": flow.step_count,
        "aborted": flow.aborted,
        "timed_out": flow.timed_out,
        "result": flow.result,
        "error": flow.error,
        "starter_id": flow.starter_id,
        "entity": {"type": flow.entity_type, "id": flow.entity_id} if flow.entity_type else None,
        "steps": [
            {
                "step_index": t.flow_step,
                "task_id": t.id,
                "name": t.name,
                "status": t.status.value,
                "result": t.result,
                "error": t.error,
            }
            for t in steps
        ],
        "join_task_id": flow.join_task_id,
        "join": task_json(join) if join is not None else None,
        "created_at": iso(flow.created_at),
        "updated_at": iso(flow.updated_at),
        "finished_at": iso(flow.finished_at),
    }
