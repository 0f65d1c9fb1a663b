"""Lifecycle hooks declared with `@on(...)` in plugin files, run by an in-process worker.

Hooks append JSON lines to a file; the test polls that file with a deadline.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowd.manager import TaskManager
from flowd.plugins import PluginLoader
from tests.engine.conftest import drain

Make = Callable[..., TaskManager]

PLUGIN = """
import json, time
from flowd import TaskManager, handler, on

OUT = {out!r}
DB = {db!r}

def note(**doc):
    with open(OUT, "a") as f:
        f.write(json.dumps(doc) + "\\n")

@handler("ok")
def ok(task):
    return {{"n": task.payload["n"]}}

@handler("boom", max_retries=2)
def boom(task):
    raise ValueError("no luck")

@on("task_completed")
def completed(event):
    # a hook runs after the commit: a fresh connection already sees the task completed
    m = TaskManager(db_url=DB, handlers_dir="/nonexistent")
    try:
        note(hook="completed", task_id=event["task_id"], name=event["name"], result=event["result"],
             status_seen=m.get_task(event["task_id"]).status)
    finally:
        m.close()

@on("task_failed")
@on("task_permanently_failed")
async def failed(event):
    note(hook=event["event_type"], task_id=event["task_id"], error=event["error"])

@on("task_started")
def raises(event):
    raise RuntimeError("a broken hook")

@on("task_started", timeout=0.2)
def blocks(event):
    time.sleep(30)

@on("worker_started")
def started(event):
    note(hook="worker_started", worker_id=event["worker_id"], handlers=event["handlers"])
"""


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


def wait_lines(out: Path, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = lines(out)
        if pred(got):
            return got
        time.sleep(0.02)
    raise AssertionError(f"hooks did not record the expected lines: {lines(out)}")


@pytest.fixture
def setup(sqlite_url: str, make_manager: Make, tmp_path: Path) -> tuple[TaskManager, Path]:
    out = tmp_path / "hooks.jsonl"
    (tmp_path / "handlers" / "hooked.py").write_text(textwrap.dedent(PLUGIN.format(out=str(out), db=sqlite_url)))
    return make_manager(sqlite_url), out


def test_hooks__run_after_commit_once_per_event_and_never_affect_the_task(setup: tuple[TaskManager, Path]) -> None:
    m, out = setup
    ok = m.submit("ok", {"n": 7})
    boom = m.submit("boom", {})
    w = drain(m)
    got = wait_lines(out, lambda ls: len(ls) >= 5)
    assert {"hook": "worker_started", "worker_id": w.worker_id, "handlers": ["boom", "ok"]} in got
    (done,) = [x for x in got if x["hook"] == "completed"]
    assert done == {
        "hook": "completed",
        "task_id": ok,
        "name": "ok",
        "result": {"n": 7},
        "status_seen": "completed",
    }
    failures = [(x["hook"], x["task_id"], x["error"]) for x in got if x.get("task_id") == boom]
    assert failures == [
        ("task_failed", boom, "ValueError: no luck"),
        ("task_failed", boom, "ValueError: no luck"),
        ("task_permanently_failed", boom, "ValueError: no luck"),
    ]
    # the raising and the blocking task_started hooks changed nothing
    assert m.get_task(ok).status == "completed" and m.get_task(boom).status == "permanently_failed"
    deadline = time.monotonic() + 10
    while w.hooks.failed < 6 and time.monotonic() < deadline:  # 3 starts x (raise + time out)
        time.sleep(0.02)
    assert w.hooks.failed == 6


def test_hooks__are_swapped_with_their_file_on_reload(setup: tuple[TaskManager, Path], tmp_path: Path) -> None:
    m, out = setup
    w = m.make_worker()
    w.run_once()
    (tmp_path / "handlers" / "hooked.py").write_text(
        "from flowd import handler\n\n@handler('ok')\ndef ok(task):\n    return 1\n"
    )
    assert m.reload_plugins()
    assert w.registry.hooks == {}, "the file's hooks went with its old version"
    tid = m.submit("ok", {"n": 1})
    drain(m)
    assert m.get_task(tid).status == "completed"
    assert [x["hook"] for x in lines(out)] == ["worker_started"]


def test_on__refuses_an_unknown_event_name(tmp_path: Path) -> None:
    from flowd import on

    with pytest.raises(ValueError, match="unknown event"):
        on("task_done")
    (tmp_path / "bad.py").write_text("from flowd import on\n\n@on('task_done')\ndef f(e):\n    pass\n")
    reg, _ = PluginLoader(tmp_path).load()
    assert "bad.py:3" in reg.errors[str(tmp_path / "bad.py")]
