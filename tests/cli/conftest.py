"""In-process CLI runs: `flowd.cli.app.main(argv)` with the environment of a fresh install."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowd.cli.app import main

ECHO = """
from flowd import handler

@handler("echo", timeout=7, max_retries=2, priority=4)
def echo(task):
    return task.payload
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def flowd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "echo.py").write_text(ECHO)
    for k in list(__import__("os").environ):
        if k.startswith("FLOWD_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWD_DB_URL", f"sqlite:///{tmp_path / 'flowd.db'}")
    monkeypatch.setenv("FLOWD_HANDLERS_DIR", str(handlers))
    monkeypatch.setenv("COLUMNS", "120")

    def run(*args: str, stdin: str | None = None) -> Result:
        if stdin is not None:
            import io

            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run
