"""Validation of what users submit, and the precedence of task options.

Every bound comes from `flowd.limits` (documented in the README, "Limits"): what passes
here is a value every database stores the same way and the worker can compute with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowd.limits import (
    MAX_CONCURRENT,
    MAX_ID,
    MAX_JSON_DEPTH,
    MAX_RETRIES,
    MAX_SECONDS,
    MAX_TEXT,
    PRIORITY_MAX,
    PRIORITY_MIN,
)

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
CODE_RE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
OPTION_KEYS = (
    "timeout",
    "max_retries",
    "retry_interval",
    "priority",
    "retry_backoff",
    "retry_max_interval",
    "retry_jitter",
)
BACKOFFS = ("fixed", "exponential")
BACKOFF_DEFAULTS = {"retry_backoff": "fixed", "retry_max_interval": 3600.0, "retry_jitter": False}


class InvalidInput(ValueError):
    """Input that flowd refuses; the message says what to fix."""


class NotUnicode(ValueError):
    """JSON text holding a lone surrogate: no valid Unicode text, so no database or reader takes it."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 200 else "given"
        raise InvalidInput(f"bad task name {shown}: use 1-128 letters, digits or _ . : - characters")
    return name


def check_text(what: str, value: Any, max_len: int = MAX_TEXT) -> str:
    """A short text (tag, key, label, entity id): a string of valid Unicode without NUL, at
    most `max_len` characters. The value is never echoed: it may be long or secret."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is {len(value)} characters long: the limit is {max_len}")
    if "\0" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text (a lone surrogate or undecodable byte)") from None
    return value


def check_id(value: Any, what: str = "task id") -> int:
    """An id as every database stores it: a whole number from 1 to 2**63 - 1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"{what} must be a whole number from 1 to {MAX_ID}, not {_short(value)}")
    return value


def check_int(what: str, value: Any, lo: int, hi: int) -> int:
    """An integer option within [lo, hi] (a bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, not {_short(value)}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{what} must be from {lo} to {hi}, not {_short(value)}")
    return value


def check_seconds(what: str, value: Any, *, zero_ok: bool = True) -> float:
    """A duration in seconds: finite, >= 0 (> 0 unless `zero_ok`), at most ten years."""
    f = _finite(what, value)
    low_ok = f >= 0 if zero_ok else f > 0
    if not low_ok or f > MAX_SECONDS:
        low = ">= 0" if zero_ok else "> 0"
        raise InvalidInput(f"{what} must be {low} and at most {MAX_SECONDS:.0f} seconds (ten years), not {value!r}")
    return f


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_payload(payload: Any, max_bytes: int | None = None) -> dict[str, Any]:
    if payload is None:
        return {}
    payload_json(payload, max_bytes)
    checked: dict[str, Any] = payload
    return checked


def payload_json(payload: Any, max_bytes: int | None = None) -> str:
    """The payload's stored JSON text; refuses what is not a JSON object, or is larger than
    `max_bytes` (the `max_payload_bytes` setting), or nested deeper than MAX_JSON_DEPTH."""
    if payload is None:
        return "{}"
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a JSON object, not {type(payload).__name__}")
    text = json_text("payload", payload)
    if max_bytes is not None and len(text) > max_bytes:
        raise InvalidInput(
            f"payload is {len(text)} bytes, over max_payload_bytes={max_bytes}: "
            "store large data elsewhere and pass a reference"
        )
    return text


def json_text(what: str, value: Any) -> str:
    """`value` as stored JSON text, or InvalidInput saying why it cannot be (never echoing it)."""
    try:
        text = dump_json(value)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from None
    except NotUnicode as e:
        raise InvalidInput(f"{what} {e}") from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} is not JSON-serialisable: {e}") from e
    # only text with that many brackets can be that deep: the walk is skipped otherwise
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidInput(f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
        elif isinstance(v, list | tuple):
            items = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((x, depth + 1) for x in items)
    return False


def dump_json(value: Any) -> str:
    """JSON text as flowd stores it: compact ASCII, no NaN or infinity, no lone surrogate.

    A lone surrogate (`"\\ud800"`) is not Unicode text: stored, it would break every later
    reader that prints or re-encodes it (`list --json`), so it is refused here.
    """
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    if "\\ud" in text:
        # rare: only then is the value encoded again to find a lone surrogate
        try:
            json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotUnicode("contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text") from None
    return text


def check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    if not labels:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidInput("labels must be a mapping of strings")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            raise InvalidInput(f"bad label key {_short(k)}")
        check_text("label key", k)
        out[k] = check_text(f"label {k!r}", str(v))
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
    retry_backoff: str = "fixed"
    retry_max_interval: float = 3600.0
    retry_jitter: bool = False


def check_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the options that are present; return them normalised."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if value is None:
            continue
        if key == "timeout":
            out[key] = check_seconds("timeout", value, zero_ok=False)
        elif key == "retry_interval":
            out[key] = check_seconds("retry_interval", value)
        elif key == "max_retries":
            # counts total attempts, the first included
            out[key] = check_int("max_retries", value, 1, MAX_RETRIES)
        elif key == "priority":
            out[key] = check_int("priority", value, PRIORITY_MIN, PRIORITY_MAX)
        elif key == "retry_backoff":
            if value not in BACKOFFS:
                raise InvalidInput(f"retry_backoff must be 'fixed' or 'exponential', not {value!r}")
            out[key] = value
        elif key == "retry_max_interval":
            out[key] = check_seconds("retry_max_interval", value, zero_ok=False)
        elif key == "retry_jitter":
            if not isinstance(value, bool):
                raise InvalidInput(f"retry_jitter must be true or false, not {value!r}")
            out[key] = value
        elif key == "schedule":
            out[key] = check_schedule(value)
        elif key == "steps":
            out[key] = check_steps(value)
        elif key == "constraints":
            from flowd.rules.constraints import check_constraints  # it imports this module

            out[key] = check_constraints(value)
        elif key == "max_concurrent":
            out[key] = check_int("max_concurrent", value, 1, MAX_CONCURRENT)
        else:
            raise InvalidInput(f"unknown option {key!r}")
    return out


def check_schedule(value: Any) -> dict[str, Any]:
    """A handler's declared schedule: `{"cron": expr, "tz": zone or None, "payload": {...}}`."""
    from flowd.rules import cron as cron_rules  # croniter loads only when a schedule is declared

    if not isinstance(value, Mapping) or not isinstance(value.get("cron"), str):
        raise InvalidInput("a schedule needs cron='<expression>', e.g. cron='0 7 * * *'")
    tz = value.get("tz")
    try:
        expr = cron_rules.validate(value["cron"])
        if tz is not None:
            if not isinstance(tz, str) or not tz:
                raise InvalidInput(f"tz must be an IANA zone name such as Europe/Berlin, not {tz!r}")
            cron_rules.zone(tz)
    except cron_rules.CronError as e:
        raise InvalidInput(str(e)) from e
    return {"cron": expr, "tz": tz, "payload": check_payload(value.get("payload") or {})}


def resolve(*layers: Mapping[str, Any]) -> TaskOptions:
    """First layer that sets an option wins (submit > handler > parent > settings)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key in OPTION_KEYS:
            if key not in merged and layer.get(key) is not None:
                merged[key] = layer[key]
    for key, default in BACKOFF_DEFAULTS.items():  # today's fixed interval when no layer says
        merged.setdefault(key, default)
    missing = [k for k in OPTION_KEYS if k not in merged]
    if missing:
        raise InvalidInput(f"options not resolved: {missing}")
    # every layer is bounded again: a handler option published by an older worker included
    merged = check_options(merged)
    return TaskOptions(
        timeout=float(merged["timeout"]),
        max_retries=int(merged["max_retries"]),
        retry_interval=float(merged["retry_interval"]),
        priority=int(merged["priority"]),
        retry_backoff=str(merged["retry_backoff"]),
        retry_max_interval=float(merged["retry_max_interval"]),
        retry_jitter=bool(merged["retry_jitter"]),
    )


def check_delay(delay: Any, what: str = "delay") -> float:
    return check_seconds(what, delay or 0)


def check_checkpoint_code(code: Any) -> str:
    """Checkpoint codes are trimmed, non-empty lower snake_case."""
    if not isinstance(code, str):
        raise InvalidInput("checkpoint code must be a string")
    c = code.strip()
    if not c or not CODE_RE.fullmatch(c):
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
