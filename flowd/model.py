"""Plain types shared by every layer: statuses, event names, ids and frozen records."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType

TaskId = NewType("TaskId", int)
WorkerId = NewType("WorkerId", str)

JSON = Any
"""Any JSON value (dict, list, str, int, float, bool or None)."""


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    PERMANENTLY_FAILED = "permanently_failed"
    PAUSED = "paused"
    SUSPENDED = "suspended"


FINISHED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.PERMANENTLY_FAILED})
"""A child in one of these counts as finished for its parent's stage."""

QUEUE_STATUSES = tuple(s for s in TaskStatus if s not in FINISHED_STATUSES)
"""The statuses of work not yet done (waiting, running, or held): what a queue depth counts."""


class TaskType(enum.StrEnum):
    ASYNC = "async"
    CRON = "cron"


class AttemptOutcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SUSPENDED = "suspended"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"


class WorkerStatus(enum.StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    DEAD = "dead"


class EventType(enum.StrEnum):
    """Audit event names; also the structlog event names of the same moments."""

    TASK_CREATED = "task_created"
    # written at a claim before schema 0013, when a claim wrote task_claimed + task_started;
    # older history still holds it, so it stays a known type for the audit filters
    TASK_CLAIMED = "task_claimed"
    TASK_STARTED = "task_started"
    TASK_RETRY_STARTED = "task_retry_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_TIMED_OUT = "task_timed_out"
    TASK_RETRY_SCHEDULED = "task_retry_scheduled"
    TASK_STATUS_CHANGED = "task_status_changed"
    TASK_RESUMED = "task_resumed"
    TASK_RECOVERED = "task_recovered"
    TASK_PERMANENTLY_FAILED = "task_permanently_failed"
    TASK_PAUSED = "task_paused"
    TASK_SUSPENDED = "task_suspended"
    TASK_SUBTASKS_CREATED = "task_subtasks_created"
    TASK_CHECKPOINT = "task_checkpoint"
    TASK_PROGRESS = "task_progress"
    TASK_UPDATED = "task_updated"
    TASK_SKIPPED = "task_skipped"
    FLOW_STARTED = "flow_started"


class _Fields:
    """Records also read like mappings (`task["status"]`), for scripts used to dicts."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass(frozen=True, slots=True)
class TaskRecord(_Fields):
    """One row of the tasks table."""

    id: TaskId
    name: str
    type: TaskType
    status: TaskStatus
    payload: JSON
    result: JSON
    error: str | None
    priority: int
    tag: str | None
    labels: dict[str, str]
    cron_expr: str | None
    cron_tz: str | None
    key: str | None
    stage: int
    context: bytes | None
    parent_id: TaskId | None
    root_id: TaskId | None
    parent_stage: int | None
    retry_count: int
    max_retries: int
    retry_interval: float
    timeout: float
    next_run_time: datetime | None
    worker_id: str | None
    attempt: int
    started_at: datetime | None
    heartbeat_at: datetime | None
    current_stage_name: str | None
    progress_text: str | None
    progress_percent: float | None
    last_event_type: str | None
    last_event_time: datetime | None
    created_at: datetime
    updated_at: datetime
    flow_id: int | None = None
    flow_step: int | None = None
    constrained: bool = False
    entity_type: str | None = None
    entity_id: str | None = None
    # attempts in a row interrupted by the death (or supersession) of their worker
    recoveries: int = 0
    retry_backoff: str = "fixed"
    retry_max_interval: float = 3600.0
    retry_jitter: bool = False
    # the plugin version of the running attempt (its attempt row takes it when it ends)
    handler_version: str | None = None


@dataclass(frozen=True, slots=True)
class FlowRecord(_Fields):
    """One row of the flows table: a fan-out/fan-in flow or a chain."""

    id: int
    kind: str
    name: str | None
    status: str
    failure_policy: str
    deadline: datetime | None
    step_count: int
    spec: dict[str, Any]
    join_task_id: TaskId | None
    aborted: bool
    timed_out: bool
    result: JSON
    error: str | None
    starter_id: TaskId | None
    entity_type: str | None
    entity_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventRecord(_Fields):
    id: int
    task_id: TaskId
    root_id: TaskId | None
    parent_id: TaskId | None
    event_type: str
    worker_id: str | None
    attempt: int | None
    stage: int | None
    from_status: str | None
    to_status: str | None
    message: str | None
    metadata: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AttemptRecord(_Fields):
    # None for the attempt in progress: it lives on its task row until it ends, when its
    # attempt row is written (once) and numbered
    id: int | None
    task_id: TaskId
    attempt: int
    worker_id: str | None
    started_at: datetime
    ended_at: datetime | None
    outcome: AttemptOutcome | None
    error: str | None
    stage: int
    handler_version: str | None = None


@dataclass(frozen=True, slots=True)
class TaskNode(_Fields):
    """The few columns of a task that workflow trees and summaries need (cheap to read by thousands)."""

    id: TaskId
    name: str
    status: TaskStatus
    parent_id: TaskId | None
    stage: int
    error: str | None
    current_stage_name: str | None
    progress_text: str | None
    progress_percent: float | None
    last_event_time: datetime | None
    # a flow's step and its index (the tree marks them)
    flow_id: int | None = None
    flow_step: int | None = None

    @staticmethod
    def of(t: TaskRecord) -> TaskNode:
        return TaskNode(
            t.id,
            t.name,
            t.status,
            t.parent_id,
            t.stage,
            t.error,
            t.current_stage_name,
            t.progress_text,
            t.progress_percent,
            t.last_event_time,
            t.flow_id,
            t.flow_step,
        )


@dataclass(frozen=True, slots=True)
class WorkerRecord(_Fields):
    worker_id: str
    pod_id: str | None
    status: WorkerStatus
    host: str
    pid: int
    registered_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    handlers: list[str]
    running_tasks: int = 0


@dataclass(frozen=True, slots=True)
class HandlerRecord(_Fields):
    """One handler one worker serves, as published in the fleet-wide registry."""

    name: str
    worker_id: str
    options: dict[str, Any]
    version: str | None
    source: str | None
    published_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paged query."""

    items: Sequence[Any]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True, slots=True)
class TaskKey:
    """One constraint key of a task, with its group's limits as declared at submit time."""

    SEP = "\x1f"  # between group and key in a ref: no group name or sane key contains it

    group: str
    key: str
    max_concurrent: int
    cooldown: float

    @property
    def ref(self) -> str:
        """The key's identity across groups: the primary key of its row in the keys table."""
        return f"{self.group}{self.SEP}{self.key}"

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "key": self.key, "max_concurrent": self.max_concurrent, "cooldown": self.cooldown}


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert: every option already resolved (see rules.options)."""

    name: str
    payload: dict[str, Any]
    type: TaskType = TaskType.ASYNC
    priority: int = 0
    tag: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    cron_expr: str | None = None
    cron_tz: str | None = None
    key: str | None = None
    max_retries: int = 3
    retry_interval: float = 0.0
    timeout: float = 60.0
    retry_backoff: str = "fixed"
    retry_max_interval: float = 3600.0
    retry_jitter: bool = False
    next_run_time: datetime | None = None
    parent_id: TaskId | None = None
    root_id: TaskId | None = None
    parent_stage: int | None = None
    flow_id: int | None = None
    flow_step: int | None = None
    constraints: tuple[TaskKey, ...] = ()
    entity: tuple[str, str] | None = None


class SubTasks:
    """Returned by a handler: suspend this task, create `defs` as children, resume after them."""

    __slots__ = ("context", "defs")

    def __init__(self, defs: Sequence[Mapping[str, Any]] = (), context: bytes | None = None) -> None:
        if context is not None and not isinstance(context, bytes | bytearray):
            raise TypeError("SubTasks context must be bytes or None")
        if isinstance(defs, Mapping | str | bytes):
            raise TypeError("SubTasks takes a list of child definitions like [{'name': 'resize', 'payload': {}}]")
        for i, d in enumerate(defs):
            if not isinstance(d, Mapping):
                raise TypeError(f"SubTasks child {i} must be a mapping with a 'name', not {type(d).__name__}")
        self.defs = [dict(d) for d in defs]
        self.context = bytes(context) if context is not None else None

    def __repr__(self) -> str:
        return f"SubTasks({len(self.defs)} children)"


class Suspension:
    """Returned by `task.suspend()`: park the task until `flowd resume` or `flowd cancel`."""

    __slots__ = ("context", "reason")

    def __init__(self, reason: str, context: bytes | None = None) -> None:
        self.reason = reason
        self.context = context
