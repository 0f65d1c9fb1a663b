"""The README's "From Python" examples run as written.

The first block (`# myapp/tasks.py`) becomes that file of a package in an empty directory; a
real `flowd worker --module myapp.tasks` serves it there; the other blocks run in order, in
one namespace, in that directory (so `sqlite:///flowd.db` is the worker's database).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from flowd.errors import FlowdError
from flowd.manager import TaskManager
from tests.e2e.conftest import FAST_ENV

ROOT = Path(__file__).resolve().parents[2]
FLOWD = str(Path(sys.executable).parent / "flowd")


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _published(m: TaskManager) -> list[str]:
    try:
        return [h.name for h in m.fleet_handlers()]
    except FlowdError:  # the worker is still creating the schema
        return []


def test_readme_from_python__examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(section("From Python"))
    assert len(blocks) >= 5 and blocks[0].startswith("# myapp/tasks.py")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(blocks[0])

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    env.update(FAST_ENV)
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [FLOWD, "worker", "--module", "myapp.tasks", "--concurrency", "20"],
            cwd=tmp_path,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    for k in list(os.environ):
        if k.startswith("FLOWD_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    try:
        deadline = time.monotonic() + 30
        with TaskManager(f"sqlite:///{tmp_path / 'flowd.db'}", handlers_dir=str(tmp_path / "none")) as probe:
            while not tmp_path.joinpath("flowd.db").exists() or len(_published(probe)) < 3:
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        namespace: dict[str, object] = {"__name__": "readme"}
        out = io.StringIO()
        with redirect_stdout(out):
            for block in blocks[1:]:
                exec(compile(block, "README.md", "exec"), namespace)
        printed = out.getvalue()
        print(printed)
        assert "completed {'url': 'https://cdn.example/cat-small.png'}" in printed
        assert "failed: KeyError: 'image'" in printed
        assert "'thumbnails': ['https://cdn.example/a-small.png'" in printed
        assert "completed {'url': 'https://cdn.example/dog-small.png'}" in printed
        assert "handler:report 0 7 * * * Europe/Berlin" in printed
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0, log.read_text()
