"""Query parameters and form fields: parsed into the TaskManager's arguments, BadInput when bad."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import QueryParams

from flowd.errors import BadInput

TASK_FILTERS = ("status", "name", "type", "tag", "label", "parent", "root", "worker")


def integer(q: QueryParams, name: str, default: int | None = None) -> int | None:
    text = q.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{name} must be a whole number, not {text!r}") from None


def page(q: QueryParams, default_limit: int) -> tuple[int, int]:
    """`limit` and `offset` (checked by the TaskManager: a limit of 0 is refused, not defaulted)."""
    limit = integer(q, "limit")
    offset = integer(q, "offset")
    return (default_limit if limit is None else limit), (0 if offset is None else offset)


def labels(items: list[str]) -> dict[str, str]:
    """`label=K=V` parameters (repeatable), as `flowd list --label K=V`."""
    out: dict[str, str] = {}
    for item in items:
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise BadInput(f"bad label {item!r}: use label=key=value")
        out[k.strip()] = v
    return out


def task_filters(q: QueryParams) -> dict[str, Any]:
    """The filters of `flowd list` from a query string (empty values are no filter)."""
    status = [s for s in q.getlist("status") if s.strip()]
    return {
        "status": status or None,
        "name": q.get("name") or None,
        "type": q.get("type") or None,
        "tag": q.get("tag") or None,
        "labels": labels(q.getlist("label")),
        "parent_id": integer(q, "parent"),
        "root_id": integer(q, "root"),
        "worker_id": q.get("worker") or None,
    }


def form(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the last value of a repeated field wins)."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise BadInput("the form is not UTF-8") from None
