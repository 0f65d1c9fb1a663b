"""Validation of what users submit, and the precedence of task options."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
CODE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
OPTION_KEYS = ("timeout", "max_retries", "retry_interval", "priority")
# every handler option (`@handler(...)`, `TaskManager.use(name, {...})`)
HANDLER_OPTION_KEYS = (*OPTION_KEYS, "max_concurrent", "steps", "constraints", "description", "should_run")
MAX_DESCRIPTION = 1000


class InvalidInput(ValueError):
    """Input that flowd refuses; the message says what to fix."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"bad task name {name!r}: use 1-128 letters, digits or _ . : - characters")
    return name


def check_payload(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    payload_json(payload)
    checked: dict[str, Any] = payload
    return checked


def payload_json(payload: Any) -> str:
    """The payload's stored JSON text; refuses what is not a JSON object."""
    if payload is None:
        return "{}"
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a JSON object, not {type(payload).__name__}")
    try:
        return dump_json(payload)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"payload is not JSON-serialisable: {e}") from e


def dump_json(value: Any) -> str:
    """JSON text as flowd stores it: compact, no NaN or infinity."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    if not labels:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidInput("labels must be a mapping of strings")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            raise InvalidInput(f"bad label key {k!r}")
        out[k] = str(v)
    return out


def _finite(name: str, value: Any, unit: str = "a number of seconds") -> float:
    try:
        f = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{name} must be {unit}, not {value!r}") from e
    if not math.isfinite(f):
        raise InvalidInput(f"{name} must be finite")
    return f


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The resolved options stored on a task row."""

    timeout: float
    max_retries: int
    retry_interval: float
    priority: int


def check_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the options that are present; return them normalised."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if value is None:
            continue
        if key == "timeout":
            t = _finite("timeout", value)
            if t <= 0:
                raise InvalidInput(f"timeout must be positive seconds, not {value!r}")
            out[key] = t
        elif key == "retry_interval":
            r = _finite("retry_interval", value)
            if r < 0:
                raise InvalidInput(f"retry_interval must be >= 0 seconds, not {value!r}")
            out[key] = r
        elif key == "max_retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"max_retries counts total attempts and must be an integer >= 1, not {value!r}")
            out[key] = value
        elif key == "priority":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"priority must be an integer, not {value!r}")
            out[key] = value
        elif key == "steps":
            out[key] = check_steps(value)
        elif key == "constraints":
            from flowd.rules.constraints import check_constraints  # it imports this module

            out[key] = check_constraints(value)
        elif key == "max_concurrent":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"max_concurrent must be an integer >= 1, not {value!r}")
            out[key] = value
        elif key == "description":
            if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
                raise InvalidInput(f"description must be a string of at most {MAX_DESCRIPTION} characters")
            out[key] = value
        elif key == "should_run":
            if not callable(value):
                raise InvalidInput("should_run must be a function of the task returning True or False")
            out[key] = value
        else:
            raise InvalidInput(f"unknown option {key!r}")
    return out


def resolve(*layers: Mapping[str, Any]) -> TaskOptions:
    """First layer that sets an option wins (submit > handler > parent > settings)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key in OPTION_KEYS:
            if key not in merged and layer.get(key) is not None:
                merged[key] = layer[key]
    missing = [k for k in OPTION_KEYS if k not in merged]
    if missing:
        raise InvalidInput(f"options not resolved: {missing}")
    return TaskOptions(
        timeout=float(merged["timeout"]),
        max_retries=int(merged["max_retries"]),
        retry_interval=float(merged["retry_interval"]),
        priority=int(merged["priority"]),
    )


def check_delay(delay: Any) -> float:
    d = _finite("delay", delay or 0)
    if d < 0:
        raise InvalidInput(f"delay must be >= 0 seconds, not {delay!r}")
    return d


def check_checkpoint_code(code: Any) -> str:
    """Checkpoint codes are trimmed, non-empty lower snake_case."""
    if not isinstance(code, str):
        raise InvalidInput("checkpoint code must be a string")
    c = code.strip()
    if not c or not CODE_RE.match(c):
        raise InvalidInput(f"checkpoint code {code!r} must be lower snake_case, e.g. 'payload_validated'")
    return c


def check_percent(percent: Any) -> float | None:
    if percent is None:
        return None
    p = _finite("progress percent", percent, "a number from 0 to 100")
    if not 0 <= p <= 100:
        raise InvalidInput(f"progress percent must be between 0 and 100, not {percent!r}")
    return p


def check_steps(steps: Any) -> dict[str, float]:
    """Declared steps: name → positive weight, in the order they run."""
    if not isinstance(steps, Mapping) or not steps:
        raise InvalidInput("steps must be a non-empty mapping of step name to weight, e.g. {'build': 30}")
    out: dict[str, float] = {}
    for name, weight in steps.items():
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"bad step name {name!r}")
        w = _finite(f"weight of step {name!r}", weight, "a positive number")
        if w <= 0:
            raise InvalidInput(f"weight of step {name!r} must be positive, not {weight!r}")
        out[name] = w
    return out


def step_percent(steps: Mapping[str, float], name: str) -> float:
    """The progress percentage when step `name` starts: the weights of the steps before it."""
    names = list(steps)
    if name not in steps:
        raise InvalidInput(f"undeclared step {name!r}: declared steps are {', '.join(names)}")
    done = sum(steps[n] for n in names[: names.index(name)])
    return round(100.0 * done / sum(steps.values()), 3)
