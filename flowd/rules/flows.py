"""Flow and chain decisions as pure functions: validation, join results, what a final step means.

A flow runs its steps in parallel and creates one join task when every step is final
(or, with `failure_policy="abort"`, at the first permanently failed step; or at its
deadline). A chain runs its steps one after another, each receiving the previous result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowd.limits import MAX_TEXT
from flowd.model import FINISHED_STATUSES, FlowRecord, TaskRecord, TaskStatus
from flowd.rules.options import InvalidInput, check_name, check_text

POLICIES = ("continue", "abort")
FLOW, CHAIN = "flow", "chain"
STEP_KEYS = frozenset(
    {
        "name",
        "payload",
        "priority",
        "timeout",
        "max_retries",
        "retry_interval",
        "retry_backoff",
        "retry_max_interval",
        "retry_jitter",
        "tag",
        "labels",
        "delay",
    }
)


def check_policy(policy: Any) -> str:
    if policy not in POLICIES:
        raise InvalidInput(f"failure_policy must be 'continue' or 'abort', not {policy!r}")
    return str(policy)


def check_entity(entity: Any) -> tuple[str, str] | None:
    """`("item", "123")` or `"item:123"` → ("item", "123"); None stays None."""
    if entity is None:
        return None
    if isinstance(entity, str):
        kind, sep, ident = entity.partition(":")
        if not sep:
            raise InvalidInput(f"bad entity {entity!r}: use TYPE:ID, e.g. user:u_123")
        entity = (kind, ident)
    if not isinstance(entity, Sequence) or len(entity) != 2:
        raise InvalidInput("entity must be a (type, id) pair")
    kind, ident = (str(x).strip() for x in entity)
    if not kind or not ident or len(kind) > 64 or len(ident) > MAX_TEXT:
        raise InvalidInput(f"bad entity: type (1-64 characters) and id (1-{MAX_TEXT} characters) are both required")
    return check_text("entity type", kind), check_text("entity id", ident)


def check_step_defs(defs: Any, what: str = "steps") -> list[dict[str, Any]]:
    """Each def is a mapping with a task `name` and optional payload and task options."""
    if isinstance(defs, Mapping) or not isinstance(defs, Sequence) or not defs:
        raise InvalidInput(f"{what} must be a non-empty list of step definitions like {{'name': 'resize'}}")
    out: list[dict[str, Any]] = []
    for i, d in enumerate(defs):
        out.append(check_step_def(d, f"{what[:-1]} {i}"))
    return out


def check_step_def(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise InvalidInput(f"{where} must be a mapping with a 'name', not {type(d).__name__}")
    unknown = set(d) - STEP_KEYS
    if unknown:
        raise InvalidInput(f"{where} has unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(STEP_KEYS))})")
    try:
        check_name(d.get("name", ""))
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e}") from None
    return dict(d)


def step_result(task: TaskRecord) -> dict[str, Any]:
    """One entry of `flow_results.steps`: success with the result, or fail with the error."""
    entry: dict[str, Any] = {"step_index": task.flow_step, "task_id": task.id, "name": task.name}
    if task.status is TaskStatus.COMPLETED:
        entry.update(status="success", result=task.result)
    else:
        entry.update(status="fail", error=task.error or f"step ended {task.status.value}")
    return entry


def flow_results(flow: FlowRecord, steps: Sequence[TaskRecord], *, aborted: bool, timed_out: bool) -> dict[str, Any]:
    """`payload["flow_results"]` of the join: the final steps (partial when aborted or timed out)."""
    final = [step_result(t) for t in steps if t.status in FINISHED_STATUSES]
    unfinished = [t.flow_step for t in steps if t.status not in FINISHED_STATUSES]
    return {
        "flow_id": flow.id,
        "steps": final,
        "unfinished": unfinished,
        "aborted": aborted,
        "timed_out": timed_out,
    }


@dataclass(frozen=True, slots=True)
class Decision:
    """What a final step means for its running flow: nothing yet, dispatch the join, or (chain) go on/stop."""

    action: str  # "wait" | "join" | "next" | "complete" | "fail"
    aborted: bool = False
    error: str | None = None


def on_final_step(flow: FlowRecord, step: TaskRecord, unfinished: int) -> Decision:
    """Decide, for a running flow, after `step` reached completed or permanently_failed.

    `unfinished` counts the flow's steps not yet final, seen under the flow's row lock.
    """
    failed = step.status is TaskStatus.PERMANENTLY_FAILED
    if flow.kind == CHAIN:
        if failed:
            label = f" {flow.name!r}" if flow.name else ""
            return Decision(
                "fail",
                error=f"chain{label} (flow {flow.id}) failed at step {step.flow_step} "
                f"({step.name}, task {step.id}): {step.error or 'failed'}",
            )
        assert step.flow_step is not None
        return Decision("complete" if step.flow_step + 1 >= flow.step_count else "next")
    if failed and flow.failure_policy == "abort":
        return Decision("join", aborted=True)
    return Decision("join") if unfinished == 0 else Decision("wait")


def outcome(flow: FlowRecord) -> str:
    """The policy outcome shown by `flowd flow show`."""
    if flow.status == "running":
        return "running"
    if flow.kind == CHAIN:
        return flow.status
    if flow.timed_out:
        return "timed_out"
    return "aborted" if flow.aborted else "completed"
