"""`Task`: what a handler receives — the task's fields and the attempt's audit API."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowd.clock import utcnow
from flowd.engine import flows
from flowd.errors import HandlerError, TaskTimeout
from flowd.limits import MAX_TEXT
from flowd.logging import get_logger
from flowd.model import EventType, Suspension, TaskRecord, TaskStatus, TaskType
from flowd.rules import flows as flow_rules
from flowd.rules.options import CODE_RE, InvalidInput, check_checkpoint_code, check_percent, step_percent
from flowd.rules.shapes import task_json
from flowd.rules.transitions import EventSpec
from flowd.store import tasks as store
from flowd.store.db import Database
from flowd.store.tasks import Fence

log = get_logger("flowd.task")

_PROGRESS_KEYS = ("stage_name", "progress_text", "progress_percent", "message", "metadata")
# the same keys by the names of the keyword form
_PROGRESS_ALIASES = {"text": "progress_text", "percent": "progress_percent"}
_CHECKPOINT_KEYS = ("code", "message", "metadata")


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
        written: Callable[[EventSpec], None] | None = None,
    ) -> None:
        """`written(event)` is told of each event this task's API committed (the worker's hooks)."""
        assert record.worker_id is not None
        self._written = written
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
        elif self._written is not None:
            self._written(event)  # committed: `@on("task_progress")` / `@on("task_checkpoint")` may run
        return ok

    def audit(
        self,
        code: str | Mapping[str, Any],
        message: str | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a `task_checkpoint` event; `code` is lower snake_case, metadata a dict.

        Forms: `audit(code, message=None, metadata=None)`, `audit(code, {"message", "metadata"})`
        and `audit({"code", "message", "metadata"})`. Anything else raises TypeError or
        ValueError (which, unless caught, fails the attempt with that message).
        """
        c, msg, meta = checkpoint_args(code, message, metadata)
        run = TaskStatus.RUNNING
        self._write(EventSpec(EventType.TASK_CHECKPOINT, run, run, msg or c, {**meta, "code": c}), {})

    checkpoint = audit

    def progress(
        self,
        text: str | Mapping[str, Any] | None = None,
        stage_name: str | Mapping[str, Any] | None = None,
        percent: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record progress (`task_progress`), update the task's progress fields and heartbeat.

        Forms: keyword arguments (`progress("text", stage_name=, percent=, message=, metadata=)`),
        `progress("text", {"stage_name", "progress_percent", "message", "metadata"})`, or one dict
        with the keys `stage_name, progress_text, progress_percent, message, metadata`; at least
        one of text, stage name, percent. `stage_name` is lower snake_case. Anything else raises
        TypeError or ValueError.
        """
        # the reference's `progress(text, {options})`: the dict arrives in the second position
        options = stage_name if isinstance(stage_name, Mapping) else None
        if options is not None:
            stage_name = None
        p = progress_args(
            text,
            options,
            {"stage_name": stage_name, "percent": percent, "message": message, "metadata": metadata},
        )
        self._progress(p)

    def _progress(self, p: ProgressArgs) -> None:
        values: dict[str, Any] = {"heartbeat_at": self._clock()}
        if p.stage_name is not None:
            values["current_stage_name"] = p.stage_name
        if p.text is not None:
            values["progress_text"] = p.text
        if p.percent is not None:
            values["progress_percent"] = p.percent
        meta = {
            "stage_name": p.stage_name,
            "progress_text": p.text,
            "progress_percent": p.percent,
            **({"metadata": dict(p.metadata)} if p.metadata else {}),
        }
        run = TaskStatus.RUNNING
        msg = p.message or (p.text if p.text is not None else p.stage_name)
        self._write(EventSpec(EventType.TASK_PROGRESS, run, run, msg, meta), values)

    def _skipped(self) -> bool:
        """Record that `should_run` said no (`task_skipped`); the attempt then completes with result null."""
        run = TaskStatus.RUNNING
        return self._write(EventSpec(EventType.TASK_SKIPPED, run, run, "should_run returned False", {}), {})

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
        # a declared step's name is the stage name as declared (steps are not held to snake_case)
        self._progress(ProgressArgs(text or f"step {position} of {len(self._steps)}", name, pct, None, {}))

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
        if self._written is not None:
            self._written(event)  # committed: `@on("flow_started")` may run
        return flow_id


def _metadata(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} metadata must be a dict, not {type(value).__name__}")
    return dict(value)


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _keys(d: Mapping[str, Any], allowed: Sequence[str], what: str) -> dict[str, Any]:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}: use {', '.join(allowed)}")
    return dict(d)


def checkpoint_args(code: Any, message: Any, metadata: Any) -> tuple[str, str | None, dict[str, Any]]:
    """The (code, message, metadata) of a `task.audit(...)` call in any of its forms."""
    if isinstance(code, Mapping):
        if message is not None or metadata is not None:
            raise TypeError("audit({...}) takes one dict: put message and metadata inside it")
        d = _keys(code, _CHECKPOINT_KEYS, "checkpoint")
        code, message, metadata = d.get("code"), d.get("message"), d.get("metadata")
    elif isinstance(message, Mapping):
        if metadata is not None:
            raise TypeError("audit(code, {...}): put metadata inside the dict, not after it")
        d = _keys(message, _CHECKPOINT_KEYS[1:], "checkpoint")
        message, metadata = d.get("message"), d.get("metadata")
    if not isinstance(code, str):
        raise TypeError(f"checkpoint code must be a string, not {type(code).__name__}")
    try:
        c = check_checkpoint_code(code)
    except InvalidInput as e:
        raise ValueError(str(e)) from None
    return c, _text(message, "checkpoint message"), _metadata(metadata, "checkpoint")


@dataclass(frozen=True, slots=True)
class ProgressArgs:
    text: str | None
    stage_name: str | None
    percent: float | None
    message: str | None
    metadata: dict[str, Any]


def progress_args(text: Any, options: Any, keywords: Mapping[str, Any]) -> ProgressArgs:
    """The fields of a `task.progress(...)` call in any of its forms (raises TypeError/ValueError)."""
    given = {_PROGRESS_ALIASES.get(k, k): v for k, v in keywords.items() if v is not None}
    if isinstance(text, Mapping):
        if options is not None or given:
            raise TypeError("progress({...}) takes one dict: put every field inside it")
        fields = _keys(text, _PROGRESS_KEYS, "progress")
    else:
        fields = {"progress_text": text} if text is not None else {}
        if options is not None:
            if not isinstance(options, Mapping):
                raise TypeError(f"progress(text, options): options must be a dict, not {type(options).__name__}")
            if given:
                raise TypeError("progress(text, {...}): put every field inside the dict, not as keywords too")
            extra = _keys(options, _PROGRESS_KEYS, "progress")
            if "progress_text" in extra and "progress_text" in fields:
                raise TypeError("progress text given twice: as the first argument and as progress_text")
            fields.update(extra)
        fields.update(given)
    stage = _text(fields.get("stage_name"), "stage_name")
    if stage is not None:
        stage = stage.strip()
        if len(stage) > MAX_TEXT:
            raise ValueError(f"stage_name is {len(stage)} characters long: the limit is {MAX_TEXT}")
        if not CODE_RE.fullmatch(stage):
            raise ValueError(f"stage_name {fields['stage_name']!r} must be lower snake_case, e.g. 'download_phase'")
    percent = fields.get("progress_percent")
    if isinstance(percent, bool) or (percent is not None and not isinstance(percent, int | float)):
        raise TypeError(f"progress_percent must be a number from 0 to 100, not {type(percent).__name__}")
    try:
        pct = check_percent(percent)
    except InvalidInput as e:
        raise ValueError(str(e)) from None
    out = ProgressArgs(
        text=_text(fields.get("progress_text"), "progress text"),
        stage_name=stage,
        percent=pct,
        message=_text(fields.get("message"), "progress message"),
        metadata=_metadata(fields.get("metadata"), "progress"),
    )
    if out.text is None and out.stage_name is None and out.percent is None:
        raise ValueError("progress needs at least one of progress_text, stage_name or progress_percent")
    return out
