"""`Task`: what a handler receives — the task's fields and the attempt's audit API."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from flowd.clock import utcnow
from flowd.engine import flows
from flowd.errors import HandlerError, TaskTimeout
from flowd.limits import MAX_TEXT
from flowd.logging import get_logger
from flowd.model import EventType, Suspension, TaskRecord, TaskStatus, TaskType
from flowd.rules import flows as flow_rules
from flowd.rules.options import InvalidInput, check_checkpoint_code, check_percent, step_percent
from flowd.rules.shapes import task_json
from flowd.rules.transitions import EventSpec
from flowd.store import tasks as store
from flowd.store.db import Database
from flowd.store.tasks import Fence

log = get_logger("flowd.task")

_PROGRESS_KEYS = {"stage_name", "progress_text", "progress_percent", "message", "metadata", "text", "percent"}


class Task:
    """The running attempt of one task, as its handler sees it.

    Every write it makes (checkpoints, progress) is fenced by this worker and attempt: once
    the attempt is over (timed out, recovered by another worker, paused) it changes nothing.
    """

    def __init__(
        self,
        record: TaskRecord,
        db: Database,
        deadline: datetime,
        clock: Callable[[], datetime] = utcnow,
        steps: Mapping[str, float] | None = None,
        resolver: flows.Resolver | None = None,
    ) -> None:
        assert record.worker_id is not None
        self._resolver = resolver
        self._steps = dict(steps) if steps else None
        self._record = record
        self._db = db
        self._deadline = deadline
        self._clock = clock
        self._fence = Fence(record.worker_id, record.attempt)
        self.id: int = record.id
        self.name: str = record.name
        self.type: str = record.type.value
        self.payload: dict[str, Any] = record.payload if isinstance(record.payload, dict) else {}
        self.stage: int = record.stage
        self.context: bytes | None = record.context
        self.parent_id: int | None = record.parent_id
        self.root_id: int | None = record.root_id
        self.attempt: int = record.attempt
        self.worker_id: str = record.worker_id
        self.tag: str | None = record.tag
        self.labels: dict[str, str] = dict(record.labels)
        self.retry_count: int = record.retry_count
        self.max_retries: int = record.max_retries
        self.is_cron: bool = record.type is TaskType.CRON

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name} stage={self.stage} attempt={self.attempt}>"

    @property
    def deadline(self) -> datetime:
        """When this attempt times out (UTC)."""
        return self._deadline

    def time_left(self) -> float:
        """Seconds until the attempt's deadline (negative once passed)."""
        return (self._deadline - self._clock()).total_seconds()

    def check_timeout(self) -> None:
        """Raise TaskTimeout once the attempt's deadline has passed."""
        if self._clock() >= self._deadline:
            raise TaskTimeout(f"task {self.id} attempt {self.attempt} passed its {self._record.timeout:g}s timeout")

    def _write(self, event: EventSpec, values: Mapping[str, Any]) -> bool:
        now = self._clock()
        with self._db.write() as conn:
            ok = store.record_fenced_event(conn, self._record, self._fence, event, values, now)
        if not ok:
            log.warning("stale_write", task_id=self.id, attempt=self.attempt, event_type=event.type.value)
        return ok

    def audit(self, code: str, message: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Write a `task_checkpoint` event; `code` is lower snake_case, metadata a dict."""
        try:
            c = check_checkpoint_code(code)
        except InvalidInput as e:
            raise HandlerError(str(e)) from None
        if metadata is not None and not isinstance(metadata, Mapping):
            raise HandlerError(f"checkpoint metadata must be a dict, not {type(metadata).__name__}")
        meta = {**dict(metadata or {}), "code": c}
        run = TaskStatus.RUNNING
        self._write(EventSpec(EventType.TASK_CHECKPOINT, run, run, message or c, meta), {})

    checkpoint = audit

    def progress(
        self,
        text: str | Mapping[str, Any] | None = None,
        stage_name: str | None = None,
        percent: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record progress (`task_progress`), update the task's progress fields and heartbeat.

        Either keyword arguments or one dict with the keys `stage_name, progress_text,
        progress_percent, message, metadata`; at least one of text, stage name, percent.
        """
        if isinstance(text, Mapping):
            d = dict(text)
            unknown = set(d) - _PROGRESS_KEYS
            if unknown:
                raise HandlerError(
                    f"unknown progress keys {sorted(unknown)}: "
                    "use stage_name, progress_text, progress_percent, message, metadata"
                )
            text = d.get("progress_text", d.get("text"))
            stage_name = d.get("stage_name", stage_name)
            percent = d.get("progress_percent", d.get("percent", percent))
            message = d.get("message", message)
            metadata = d.get("metadata", metadata)
        if text is None and stage_name is None and percent is None:
            raise HandlerError("progress needs at least one of text, stage_name or percent")
        try:
            pct = check_percent(percent)
        except InvalidInput as e:
            raise HandlerError(str(e)) from None
        if metadata is not None and not isinstance(metadata, Mapping):
            raise HandlerError(f"progress metadata must be a dict, not {type(metadata).__name__}")
        if stage_name is not None and len(str(stage_name)) > MAX_TEXT:
            raise HandlerError(f"stage_name is {len(str(stage_name))} characters long: the limit is {MAX_TEXT}")
        values: dict[str, Any] = {"heartbeat_at": self._clock()}
        if stage_name is not None:
            values["current_stage_name"] = str(stage_name)
        if text is not None:
            values["progress_text"] = str(text)
        if pct is not None:
            values["progress_percent"] = pct
        meta = {
            "stage_name": stage_name,
            "progress_text": text,
            "progress_percent": pct,
            **({"metadata": dict(metadata)} if metadata else {}),
        }
        run = TaskStatus.RUNNING
        msg = message or (str(text) if text is not None else stage_name)
        self._write(EventSpec(EventType.TASK_PROGRESS, run, run, msg, meta), values)

    def step(self, name: str, text: str | None = None) -> None:
        """Enter a declared step: sets the stage name and the weighted percentage for you.

        With `@handler(..., steps={"build": 30, "test": 20, "ship": 50})`, `step("test")`
        records 30 % (the weight of the steps before it); success records 100 %.
        """
        if not self._steps:
            raise HandlerError(f"handler {self.name!r} declares no steps: use @handler(..., steps={{...}})")
        try:
            pct = step_percent(self._steps, name)
        except InvalidInput as e:
            raise HandlerError(str(e)) from None
        position = list(self._steps).index(name) + 1
        self.progress(text or f"step {position} of {len(self._steps)}", stage_name=name, percent=pct)

    def children(self) -> list[dict[str, Any]]:
        """The previous stage's child tasks (JSON task shape), sorted by id."""
        if self.stage == 0:
            return []
        with self._db.read() as conn:
            kids = store.children(conn, self.id, self.stage - 1)
        return [task_json(k) for k in kids]

    def suspend(self, reason: str, context: bytes | None = None) -> Suspension:
        """Return this value to park the task until `flowd resume` or `flowd cancel`."""
        if not isinstance(reason, str) or not reason.strip():
            raise HandlerError("suspend needs a non-empty reason")
        if context is not None and not isinstance(context, bytes | bytearray):
            raise HandlerError("suspend context must be bytes")
        return Suspension(reason.strip(), bytes(context) if context is not None else None)

    def start_flow(
        self,
        steps: Sequence[Mapping[str, Any]],
        join: Mapping[str, Any],
        failure_policy: str = "continue",
        timeout: float | None = None,
        entity: tuple[str, str] | str | None = None,
        name: str | None = None,
    ) -> int:
        """Start a fan-out/fan-in flow: `steps` run in parallel, then one `join` task; returns the flow id.

        The join's payload gets `flow_results`. `failure_policy="abort"` dispatches the join at
        the first permanently failed step; `timeout` (seconds) dispatches it with `timed_out`.
        Steps and join are children of this task (same root, labels inherited). The write is
        fenced: once this attempt is over it raises and creates nothing.
        """
        return self._start(
            flow_rules.FLOW, steps, join, failure_policy=failure_policy, timeout=timeout, entity=entity, name=name
        )

    def start_chain(
        self, steps: Sequence[Mapping[str, Any]], name: str | None = None, entity: tuple[str, str] | str | None = None
    ) -> int:
        """Start a chain: steps run one after another, each with `payload["previous_result"]`."""
        return self._start(flow_rules.CHAIN, steps, None, name=name, entity=entity)

    def _start(self, kind: str, steps: Any, join: Any, **kw: Any) -> int:
        if self._resolver is None:
            raise HandlerError("this task cannot start flows (no handler registry)")
        try:
            p = flows.plan(self._resolver, kind, steps, join, inherit=flows.Inherit.of(self._record), **kw)
        except InvalidInput as e:
            raise HandlerError(str(e)) from None
        now = self._clock()
        with self._db.write() as conn:
            flow_id = flows.start(conn, p, now)
            run = TaskStatus.RUNNING
            event = EventSpec(
                EventType.FLOW_STARTED,
                run,
                run,
                f"{kind} {flow_id} started with {len(p.steps)} steps",
                {"flow_id": flow_id, "kind": kind, "steps": len(p.steps)},
            )
            if not store.record_fenced_event(conn, self._record, self._fence, event, {}, now):
                # this attempt is over (timed out, recovered, paused): roll the flow back
                raise HandlerError(f"task {self.id} attempt {self.attempt} no longer owns the task: flow not started")
        return flow_id
