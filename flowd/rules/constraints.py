"""Constraint groups (pure): declarations, key rendering, and which groups apply to a task.

A group has a `key` template over the task's payload and labels (`"{payload[domain]}"`),
`max_concurrent` runs per key (1 = mutual exclusion, with per-key FIFO) and `cooldown`
seconds between the end of one run and the start of the next of the same key. Keys are
rendered at submit time and stored; the claim reads them, never user code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowd.limits import MAX_CONCURRENT
from flowd.model import TaskKey
from flowd.rules.options import InvalidInput, check_int, check_seconds

GROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_KEY = 255
SEP = TaskKey.SEP


@dataclass(frozen=True, slots=True)
class Constraint:
    """A constraint group: `constraint("domain-mutex", key="{payload[domain]}", cooldown=11)`."""

    name: str
    key: str
    max_concurrent: int = 1
    cooldown: float = 0.0
    applies_to: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "max_concurrent": self.max_concurrent,
            "cooldown": self.cooldown,
            "applies_to": list(self.applies_to),
        }


def constraint(
    name: str, key: str, max_concurrent: int = 1, cooldown: float = 0.0, applies_to: Iterable[str] = ()
) -> Constraint:
    """Declare a constraint group (validated); pass it to `@handler(..., constraints=[...])`."""
    if not isinstance(name, str) or not GROUP_RE.fullmatch(name):
        raise InvalidInput(f"bad constraint group name {name!r}: use 1-128 letters, digits or _ . - characters")
    if not isinstance(key, str) or "{" not in key:
        raise InvalidInput(f"constraint {name!r}: key must be a template like '{{payload[domain]}}', not {key!r}")
    try:
        check_int("max_concurrent", max_concurrent, 1, MAX_CONCURRENT)
        cd = check_seconds("cooldown", cooldown)
    except InvalidInput as e:
        raise InvalidInput(f"constraint {name!r}: {e}") from None
    if isinstance(applies_to, str):
        applies_to = [applies_to]
    return Constraint(name, key, max_concurrent, cd, tuple(str(n) for n in applies_to))


def from_mapping(name: str, d: Mapping[str, Any]) -> Constraint:
    """A group from config (`[constraints.NAME]`) or from a published handler option."""
    unknown = set(d) - {"name", "key", "max_concurrent", "cooldown", "applies_to"}
    if unknown:
        raise InvalidInput(f"constraint {name!r}: unknown settings {sorted(unknown)}")
    return constraint(
        name, d.get("key", ""), d.get("max_concurrent", 1), d.get("cooldown", 0.0), d.get("applies_to") or ()
    )


def check_constraints(value: Any) -> list[dict[str, Any]]:
    """The `constraints=` handler option: Constraint objects (or their dicts), stored as dicts."""
    if not isinstance(value, list | tuple):
        raise InvalidInput("constraints must be a list of constraint(...) objects")
    out = []
    for c in value:
        if isinstance(c, Mapping):
            c = from_mapping(str(c.get("name", "")), c)
        if not isinstance(c, Constraint):
            raise InvalidInput(f"constraints must be constraint(...) objects, not {type(c).__name__}")
        out.append(c.as_dict())
    return out


def render_key(template: str, payload: Mapping[str, Any], labels: Mapping[str, str]) -> str | None:
    """The key of a task, or None (exempt) when a field is missing or the key renders empty."""
    try:
        key = template.format(payload=payload, labels=labels).strip()
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        return None
    if not key:
        return None
    if len(key) > MAX_KEY or SEP in key:
        # a stable stand-in for keys too long for the index
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def keys_for(
    name: str, payload: Mapping[str, Any], labels: Mapping[str, str], groups: Iterable[Constraint]
) -> list[TaskKey]:
    """The keys of a task named `name`: one per applicable group whose key renders non-empty.

    A group declared with `applies_to` applies to those names only; without, to every task
    (its key template exempts tasks that lack the field).
    """
    out: dict[str, TaskKey] = {}
    for g in groups:
        if g.applies_to and name not in g.applies_to:
            continue
        key = render_key(g.key, payload, labels)
        if key is not None and g.name not in out:
            out[g.name] = TaskKey(g.name, key, g.max_concurrent, g.cooldown)
    return [out[n] for n in sorted(out)]


def groups_for(
    name: str, config: Mapping[str, Mapping[str, Any]], handler_constraints: Iterable[Mapping[str, Any]] = ()
) -> list[Constraint]:
    """The groups that may apply to task `name`: config groups, then its handler's own.

    A handler's groups apply to its tasks whatever their `applies_to`; a config group with
    the same name as a handler's wins (the operator's file overrides the code).
    """
    out = {n: from_mapping(n, d) for n, d in config.items()}
    for d in handler_constraints:
        c = from_mapping(str(d.get("name", "")), d)
        out.setdefault(c.name, Constraint(c.name, c.key, c.max_concurrent, c.cooldown, (name,)))
    return [out[n] for n in sorted(out)]


def task_keys(
    name: str,
    payload: Mapping[str, Any],
    labels: Mapping[str, str],
    config: Mapping[str, Mapping[str, Any]],
    handler_options: Mapping[str, Any],
) -> tuple[TaskKey, ...]:
    """The keys to store with a new task: config groups plus its handler's `constraints`."""
    groups = groups_for(name, config, handler_options.get("constraints") or ())
    return tuple(keys_for(name, payload, labels, groups))
