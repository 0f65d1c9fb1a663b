"""Read an environment file the way systemd's `EnvironmentFile=` does, and run a command with it.

`python -m flowd.envfile FILE COMMAND [ARG...]` runs COMMAND with FILE's variables added to
the environment. The `flowd-admin` wrapper (deploy/) uses it so the CLI sees exactly the
settings the units see: a shell's `. FILE` would expand `$`, split on spaces and choke on
quotes, so a JSON value such as `FLOWD_CONSTRAINTS={"per_tenant": {...}}` breaks it.

The syntax (systemd's env-file parser): `KEY=VALUE` lines; blank lines and lines whose first
non-blank character is `#` or `;` are comments; whitespace around the key and before the
value is dropped, and at the end of an unquoted value; a value may be quoted in `'...'`
(literal) or `"..."` (where a backslash escapes `"`, `\\`, `` ` `` and `$`), and a quoted value
may span lines; outside quotes a backslash escapes the next character, and at the end of a
line joins the next one. Quotes inside an unquoted value are kept as they are. Nothing is
expanded. A line with an invalid variable name is skipped with a warning, as systemd does.
"""

from __future__ import annotations

import os
import re
import sys

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WHITESPACE = " \t\r\n"
_DOUBLE_QUOTE_ESCAPES = '"\\`$'


def parse(text: str, *, warn: bool = True) -> dict[str, str]:
    """The variables of an environment file, in systemd's reading (see the module docstring)."""
    out: dict[str, str] = {}
    state = "pre_key"
    key: list[str] = []
    value: list[str] = []
    # index past the last character of an unquoted value that is not trailing whitespace
    keep = 0

    def push() -> None:
        name = "".join(key).strip(_WHITESPACE)
        if _NAME.match(name):
            out[name] = "".join(value)
        elif warn:
            sys.stderr.write(f"flowd: warning: environment file: ignoring invalid variable name {name!r}\n")
        key.clear()
        value.clear()

    for c in text:
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in _WHITESPACE:
                state = "key"
                key.append(c)
        elif state == "comment":
            if c == "\n":
                state = "pre_key"
        elif state == "key":
            if c == "\n":  # a line without '=' is ignored
                state = "pre_key"
                key.clear()
            elif c == "=":
                state = "pre_value"
                keep = 0
            else:
                key.append(c)
        elif state == "pre_value":
            if c == "\n":
                push()
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in _WHITESPACE:
                state = "value"
                value.append(c)
                keep = len(value)
        elif state == "value":
            if c == "\n":
                del value[keep:]
                push()
                state = "pre_key"
            elif c == "\\":
                state = "value_escape"
            else:
                value.append(c)
                if c not in _WHITESPACE:
                    keep = len(value)
        elif state == "value_escape":
            state = "value"
            if c != "\n":  # an escaped newline joins the lines
                value.append(c)
                keep = len(value)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
            keep = len(value)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value.append(c)
            keep = len(value)
        elif state == "double_escape":
            state = "double"
            if c in _DOUBLE_QUOTE_ESCAPES:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
            keep = len(value)
    if state in ("value", "value_escape"):
        del value[keep:]
        push()
    elif state in ("pre_value", "single", "double", "double_escape"):
        push()
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m flowd.envfile FILE COMMAND [ARG...]`: exec COMMAND with FILE's variables."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        sys.stderr.write("usage: python -m flowd.envfile FILE COMMAND [ARG...]\n")
        sys.exit(2)
    path, command = args[0], args[1:]
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        sys.stderr.write(f"flowd: error: cannot read environment file {path}: {getattr(e, 'strerror', None) or e}\n")
        sys.exit(1)
    env = {**os.environ, **parse(text)}
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        sys.stderr.write(f"flowd: error: cannot run {command[0]}: {e.strerror or e}\n")
        sys.exit(127)


if __name__ == "__main__":
    main()
