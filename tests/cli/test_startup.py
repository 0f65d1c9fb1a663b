"""Start-up cost of the CLI: what a command imports, checked in a fresh interpreter (no timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import runpy, sys
sys.argv = ["flowd", *sys.argv[1:]]
try:
    runpy.run_module("flowd", run_name="__main__")
except SystemExit as e:
    code = e.code
print("\\nIMPORTED:", " ".join(m for m in ("structlog", "flowd.engine.worker", "watchfiles") if m in sys.modules))
"""


def _imported(tmp_path: Path, *args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    ).stdout
    line = out.rsplit("IMPORTED:", 1)[1]
    return set(line.split())


def test_submit__loads_no_logging_or_worker_machinery(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    assert _imported(tmp_path, "submit", "--db", db, "--allow-unknown", "echo", "{}") == set()


def test_help__loads_no_logging(tmp_path: Path) -> None:
    assert _imported(tmp_path, "--help") == set()


def test_a_logged_warning__loads_structlog_and_renders_through_it(tmp_path: Path) -> None:
    code = (
        "import logging; from flowd.logging import configure, get_logger; import sys\n"
        "configure('json', 'warning', defer=True)\n"
        "assert 'structlog' not in sys.modules\n"
        "logging.getLogger('std').warning('first %s', 1)\n"
        "get_logger('mine').warning('second', k=2)\n"
        "get_logger('mine').info('below the level')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    import json

    lines = [json.loads(x) for x in res.stderr.splitlines()]
    assert [(x["logger"], x["event"], x["level"]) for x in lines] == [
        ("std", "first 1", "warning"),
        ("mine", "second", "warning"),
    ]
    assert lines[1]["k"] == 2
