"""Options every command shares, input parsing, and building the TaskManager."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowd.errors import BadInput

if TYPE_CHECKING:
    from flowd.manager import TaskManager

DbOpt = Annotated[str | None, typer.Option("--db", help="database URL (overrides FLOWD_DB_URL)", show_default=False)]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="TOML settings file", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]


def manager(db: str | None, config: str | None, **overrides: Any) -> TaskManager:
    from flowd.manager import TaskManager

    m = TaskManager(config=config, db_url=db, _cli=True, **overrides)
    # submit, cron, flows and constraints import the plugin files (handler options): what
    # a plugin prints at import goes to stderr, so stdout stays the id or one JSON document
    m.import_output = sys.stderr
    return m


def parse_payload(text: str | None) -> dict[str, Any]:
    """PAYLOAD: a JSON object, `-` for standard input, or `@file.json`."""
    if text is None:
        return {}
    source = "payload"
    if text == "-":
        source = "payload from stdin"
        try:
            text = sys.stdin.buffer.read().decode("utf-8") if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        except UnicodeDecodeError as e:
            raise BadInput(f"{source} is not UTF-8 text (byte {e.start}): send JSON encoded in UTF-8") from e
    elif text.startswith("@"):
        path = Path(text[1:])
        source = f"payload file {path}"
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as e:
            raise BadInput(f"cannot read payload file {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise BadInput(f"{source} is not UTF-8 text (byte {e.start}): save it in UTF-8") from e
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{source} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except RecursionError as e:
        raise BadInput(f"{source} is nested too deeply to be read") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise BadInput(f"{source} is not usable JSON: {str(e).splitlines()[0]}") from e
    if not isinstance(value, dict):
        raise BadInput(f"{source} must be a JSON object like '{{\"x\": 1}}', not {type(value).__name__}")
    return value


def parse_labels(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise BadInput(f"bad label {item!r}: use --label key=value")
        out[k.strip()] = v
    return out


def parse_time(text: str | None, what: str) -> Any:
    if text is None:
        return None
    from flowd.clock import parse_iso

    try:
        return parse_iso(text)
    except ValueError as e:
        raise BadInput(f"bad {what} {text!r}: use ISO-8601, e.g. 2026-11-22T17:41:55Z") from e
