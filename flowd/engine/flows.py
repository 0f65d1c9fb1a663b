"""Flows and chains: start them, move them on when a step is final, time them out.

Every step is an ordinary task carrying `flow_id` and `flow_step`. When a step reaches
completed or permanently_failed, `on_step_final` runs in the same transaction as that
transition: it locks the flow row, counts the steps not yet final, and dispatches the join
through a conditional update (`running` → `joined`) — so however many workers finish steps
at the same moment, exactly one of them creates the join task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowd.clock import after
from flowd.logging import get_logger
from flowd.model import FlowRecord, HandlerRecord, NewTask, TaskId, TaskKey, TaskRecord
from flowd.plugins import Registry
from flowd.registry import catalog
from flowd.rules import constraints as cons
from flowd.rules import flows as rules
from flowd.rules import options as opt
from flowd.store import flows as flow_store
from flowd.store import tasks as task_store
from flowd.store.db import Database

log = get_logger("flowd.flows")


@dataclass(frozen=True, slots=True)
class Inherit:
    """What a created task takes from whoever created it (a parent task, or nothing)."""

    priority: int | None = None
    tag: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    parent_id: TaskId | None = None
    root_id: TaskId | None = None

    @classmethod
    def of(cls, parent: TaskRecord | None, labels: Mapping[str, str] | None = None) -> Inherit:
        if parent is None:
            return cls(labels=dict(labels or {}))
        return cls(
            priority=parent.priority,
            tag=parent.tag,
            labels={**parent.labels, **(labels or {})},
            parent_id=parent.id,
            root_id=parent.root_id if parent.root_id is not None else parent.id,
        )


@dataclass(frozen=True, slots=True)
class Resolver:
    """Resolves task definitions: def > handler options > inherited > settings.

    `options_of(name)` gives a handler's task options and raises InvalidInput for a name
    nobody serves (a worker asks its registry; the manager also asks the fleet).
    """

    options_of: Callable[[str], Mapping[str, Any]]
    defaults: Mapping[str, Any]
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # config constraint groups
    max_payload_bytes: int | None = None

    @classmethod
    def of_registry(
        cls,
        registry: Registry,
        defaults: Mapping[str, Any],
        groups: Mapping[str, Mapping[str, Any]],
        fleet: Callable[[str | None], Sequence[HandlerRecord]] | None = None,
        max_payload_bytes: int | None = None,
    ) -> Resolver:
        """This worker's handlers first; a name only other live workers serve (`fleet`, the
        published catalog) resolves with their newest options: a mixed fleet may split work."""

        def options_of(name: str) -> Mapping[str, Any]:
            spec = registry.get(name)
            if spec is not None:
                return spec.options
            options = catalog.newest_options(fleet(name)) if fleet is not None else None
            if options is None:
                served = {h.name for h in fleet(None)} if fleet is not None else set()
                known = ", ".join(sorted(set(registry.names()) | served)) or "none"
                raise opt.InvalidInput(f"no handler named {name!r} (known: {known})")
            return options

        return cls(options_of, defaults, groups, max_payload_bytes)

    def resolve(self, d: Mapping[str, Any], where: str, inherit: Inherit) -> dict[str, Any]:
        """A definition with every option resolved (JSON-ready: flows store it until its turn)."""
        d = rules.check_step_def(d, where)
        name = d["name"]
        try:
            handler_options = self.options_of(name)
        except opt.InvalidInput as e:
            raise opt.InvalidInput(f"{where}: {e}") from None
        own = opt.check_options({k: d.get(k) for k in opt.OPTION_KEYS})
        parent = {"priority": inherit.priority} if inherit.priority is not None else {}
        resolved = opt.resolve(own, handler_options, parent, self.defaults)
        try:
            payload = opt.check_payload(d.get("payload", {}), self.max_payload_bytes)
        except opt.InvalidInput as e:
            raise opt.InvalidInput(f"{where}: {e}") from None
        labels = {**inherit.labels, **opt.check_labels(d.get("labels"))}
        tag = d.get("tag", inherit.tag)
        keys = cons.task_keys(name, payload, labels, self.groups, handler_options)
        return {
            "name": name,
            "payload": payload,
            "priority": resolved.priority,
            "tag": opt.check_text("tag", tag) if tag is not None else None,
            "labels": labels,
            "constraints": [k.as_dict() for k in keys],
            "max_retries": resolved.max_retries,
            "retry_interval": resolved.retry_interval,
            "retry_backoff": resolved.retry_backoff,
            "retry_max_interval": resolved.retry_max_interval,
            "retry_jitter": resolved.retry_jitter,
            "timeout": resolved.timeout,
            "delay": opt.check_delay(d.get("delay", 0)),
        }


def new_task(resolved: Mapping[str, Any], now: datetime, **links: Any) -> NewTask:
    """The NewTask of a resolved definition, due after its delay, with `links` (parent, flow)."""
    return NewTask(
        name=resolved["name"],
        payload=dict(resolved["payload"]),
        priority=int(resolved["priority"]),
        tag=resolved.get("tag"),
        labels=dict(resolved.get("labels") or {}),
        max_retries=int(resolved["max_retries"]),
        retry_interval=float(resolved["retry_interval"]),
        # flows started before these options existed stored no backoff: today's fixed interval
        retry_backoff=str(resolved.get("retry_backoff", "fixed")),
        retry_max_interval=float(resolved.get("retry_max_interval", 3600.0)),
        retry_jitter=bool(resolved.get("retry_jitter", False)),
        timeout=float(resolved["timeout"]),
        next_run_time=after(now, float(resolved.get("delay") or 0)),
        constraints=tuple(TaskKey(**k) for k in resolved.get("constraints") or ()),
        **links,
    )


@dataclass(frozen=True, slots=True)
class FlowPlan:
    """A validated flow or chain, ready to insert."""

    kind: str
    steps: list[dict[str, Any]]
    join: dict[str, Any] | None
    failure_policy: str
    timeout: float | None
    entity: tuple[str, str] | None
    name: str | None
    inherit: Inherit


def plan(
    resolver: Resolver,
    kind: str,
    steps: Any,
    join: Any = None,
    *,
    failure_policy: str = "continue",
    timeout: float | None = None,
    entity: Any = None,
    name: str | None = None,
    inherit: Inherit | None = None,
) -> FlowPlan:
    """Validate and resolve everything up front: a bad step is refused before anything is written."""
    inherit = inherit or Inherit()
    defs = rules.check_step_defs(steps)
    resolved = [resolver.resolve(d, f"step {i}", inherit) for i, d in enumerate(defs)]
    join_def = None
    if kind == rules.FLOW:
        if join is None:
            raise opt.InvalidInput("a flow needs a join task, e.g. join={'name': 'merge'}")
        join_def = resolver.resolve(join, "join", inherit)
    if timeout is not None:
        timeout = opt.check_seconds("flow timeout", timeout, zero_ok=False)
    if name is not None and (not isinstance(name, str) or not name):
        raise opt.InvalidInput("flow name must be 1-128 characters")
    if name is not None:
        opt.check_text("flow name", name, 128)
    return FlowPlan(
        kind=kind,
        steps=resolved,
        join=join_def,
        failure_policy=rules.check_policy(failure_policy),
        timeout=float(timeout) if timeout is not None else None,
        entity=rules.check_entity(entity),
        name=name,
        inherit=inherit,
    )


def _links(flow: FlowRecord) -> dict[str, Any]:
    """Parent, root and entity of the tasks a flow creates later (the join, a chain's next step)."""
    links = flow.spec.get("links") or {}
    entity = (flow.entity_type, flow.entity_id) if flow.entity_type and flow.entity_id else None
    return {"parent_id": links.get("parent_id"), "root_id": links.get("root_id"), "entity": entity}


def start(conn: Any, p: FlowPlan, now: datetime) -> int:
    """Insert the flow and its first tasks (every step of a flow; the first of a chain)."""
    links = {"parent_id": p.inherit.parent_id, "root_id": p.inherit.root_id}
    spec: dict[str, Any] = {"links": links}
    if p.kind == rules.FLOW:
        spec["join"] = p.join
    else:
        spec["steps"] = p.steps
    flow_id = flow_store.insert(
        conn,
        {
            "kind": p.kind,
            "name": p.name,
            "failure_policy": p.failure_policy,
            "deadline": after(now, p.timeout) if p.timeout is not None else None,
            "step_count": len(p.steps),
            "spec": spec,
            "starter_id": p.inherit.parent_id,
            "entity_type": p.entity[0] if p.entity else None,
            "entity_id": p.entity[1] if p.entity else None,
        },
        now,
    )
    first = p.steps if p.kind == rules.FLOW else p.steps[:1]
    news = [new_task(s, now, flow_id=flow_id, flow_step=i, entity=p.entity, **links) for i, s in enumerate(first)]
    task_store.insert_tasks(conn, news, now)
    log.info("flow_started", flow_id=flow_id, kind=p.kind, steps=len(p.steps))
    return flow_id


def on_step_final(conn: Any, task: TaskRecord, now: datetime) -> None:
    """A step reached completed or permanently_failed (same transaction): move its flow on."""
    assert task.flow_id is not None
    flow = flow_store.get(conn, task.flow_id, for_update=True)
    if flow is None or flow.status != flow_store.RUNNING:
        return  # already joined, aborted, timed out or finished: a late step changes nothing
    step = task_store.get(conn, task.id)
    assert step is not None
    unfinished = flow_store.count_unfinished(conn, flow.id) if flow.kind == rules.FLOW else 0
    d = rules.on_final_step(flow, step, unfinished)
    if d.action == "join":
        _dispatch_join(conn, flow, now, aborted=d.aborted, timed_out=False)
    elif d.action == "next":
        assert step.flow_step is not None
        i = step.flow_step + 1
        nxt = flow.spec["steps"][i]
        payload = {**nxt["payload"], "previous_result": step.result}
        task_store.insert_tasks(
            conn, [new_task({**nxt, "payload": payload}, now, flow_id=flow.id, flow_step=i, **_links(flow))], now
        )
    elif d.action == "complete":
        flow_store.close(conn, flow.id, "completed", {"result": step.result}, now)
        log.info("flow_completed", flow_id=flow.id, kind=flow.kind)
    elif d.action == "fail":
        flow_store.close(conn, flow.id, "failed", {"error": d.error}, now)
        log.warning("flow_failed", flow_id=flow.id, error=d.error)


def _dispatch_join(conn: Any, flow: FlowRecord, now: datetime, *, aborted: bool, timed_out: bool) -> TaskId | None:
    """Create the join task once: only the transaction whose conditional update wins inserts it."""
    steps = flow_store.steps(conn, flow.id)
    results = rules.flow_results(flow, steps, aborted=aborted, timed_out=timed_out)
    if not flow_store.close(conn, flow.id, "joined", {"aborted": aborted, "timed_out": timed_out}, now):
        return None
    join = flow.spec["join"]
    new = new_task({**join, "payload": {**join["payload"], "flow_results": results}}, now, **_links(flow))
    (jid,) = task_store.insert_tasks(conn, [new], now)
    flow_store.update(conn, flow.id, {"join_task_id": jid}, now)
    log.info("flow_joined", flow_id=flow.id, join_task_id=jid, aborted=aborted, timed_out=timed_out)
    return jid


def sweep_deadlines(db: Database, now: datetime) -> list[int]:
    """Dispatch the join of every running flow past its deadline (`timed_out: true`)."""
    with db.read() as conn:
        candidates = flow_store.past_deadline(conn, now)
    done: list[int] = []
    for fid in candidates:
        with db.write() as conn:
            flow = flow_store.get(conn, fid, for_update=True)
            if flow is None or flow.status != flow_store.RUNNING or flow.deadline is None or flow.deadline > now:
                continue
            if flow.kind == rules.FLOW and _dispatch_join(conn, flow, now, aborted=False, timed_out=True):
                done.append(fid)
    return done


def show(db: Database, flow_id: int) -> tuple[FlowRecord, list[TaskRecord], TaskRecord | None] | None:
    """A flow, its steps and its join task, in one snapshot."""
    with db.read() as conn:
        flow = flow_store.get(conn, flow_id)
        if flow is None:
            return None
        steps = flow_store.steps(conn, flow_id)
        join = task_store.get(conn, flow.join_task_id) if flow.join_task_id is not None else None
    return flow, steps, join


def resolve_children(
    resolver: Resolver, parent: TaskRecord, defs: Sequence[Mapping[str, Any]], now: datetime
) -> list[NewTask]:
    """SubTasks definitions as children of `parent`'s current stage."""
    inherit = Inherit.of(parent)
    out = []
    for i, d in enumerate(defs):
        r = resolver.resolve(d, f"child {i}", inherit)
        out.append(new_task(r, now, parent_id=inherit.parent_id, root_id=inherit.root_id, parent_stage=parent.stage))
    return out
