"""Hot reload of the plugin directory under a running worker process.

The worker is a real `flowd worker` process; the test submits and reads through an
in-process TaskManager on the same database (fast), and through the CLI where the CLI is
the point.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowd.manager import TaskManager
from tests.e2e.conftest import Cli


def version_of(path: Path, handlers: Path) -> str:
    extra = hashlib.sha256()
    for p in sorted(handlers.glob("_*.py")):
        extra.update(p.name.encode() + b"\0" + p.read_bytes())
    return hashlib.sha256(path.read_bytes() + extra.digest()).hexdigest()[:12]


def plugin(marker: str, name: str = "job") -> str:
    return f'''
from flowd import handler

@handler("{name}")
def job(task):
    return "{marker}"
'''


@pytest.fixture
def api(cli: Cli) -> Iterator[TaskManager]:
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers), reload=False)
    yield m
    m.close()


def run(m: TaskManager, cli: Cli, name: str = "job", timeout: float = 20) -> tuple[Any, dict[str, Any]]:
    """Submit one task through the API, wait for its end, return (result, its one attempt)."""
    m.reload_plugins()  # this process's view of the directory, for name resolution
    tid = m.submit(name, {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = m.get_task(tid)
        if t.status in ("completed", "permanently_failed"):
            assert t.status == "completed", (t.error, cli.log_tail())
            (att,) = m.task_audit(tid)["attempts"]["items"]
            return t.result, att
        time.sleep(0.05)
    raise AssertionError(f"task {tid} did not finish\n{cli.log_tail()}")


def handlers_of_worker(m: TaskManager) -> list[str]:
    return list(m.workers(status="active").items[0].handlers)


def poll(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout}s")


def test_new_edited_and_deleted_files__take_effect_without_restart(cli: Cli, api: TaskManager) -> None:
    cli.handler_file("other", plugin("other", "other"))
    cli.worker()
    poll(lambda: api.workers(status="active").total == 1, what="worker registered")
    path = cli.handler_file("job", plugin("v1"))
    poll(lambda: "job" in handlers_of_worker(api), what="new file live")
    result, att = run(api, cli)
    assert result == "v1" and att["handler_version"] == version_of(path, cli.handlers)

    path.write_text(plugin("v2"))
    v2 = version_of(path, cli.handlers)

    def edit_live() -> bool:
        result, att = run(api, cli)
        return bool(result == "v2" and att["handler_version"] == v2)

    poll(edit_live, what="edit live")

    path.unlink()
    poll(lambda: "job" not in handlers_of_worker(api), what="handler unregistered")
    assert cli.run("submit", "job", "{}", check=False).returncode == 2, "the CLI no longer knows the name"


def test_deleted_handler__its_pending_tasks_wait(cli: Cli, api: TaskManager) -> None:
    path = cli.handler_file("job", plugin("v1"))
    cli.worker()
    poll(lambda: api.workers(status="active").total == 1, what="worker registered")
    path.unlink()
    poll(lambda: "job" not in handlers_of_worker(api), what="handler unregistered")
    tid = api.submit("job", {}, allow_unknown=True)  # nobody serves it now
    time.sleep(1.0)  # several poll intervals: nobody may claim it
    assert api.get_task(tid).status == "pending"
    path.write_text(plugin("back"))
    poll(lambda: api.get_task(tid).status == "completed", what="task runs once the file is back")


def test_broken_edit__keeps_the_last_good_version_and_logs_file_and_line(cli: Cli, api: TaskManager) -> None:
    path = cli.handler_file("job", plugin("good"))
    cli.worker()
    assert run(api, cli)[0] == "good"
    path.write_text(plugin("bad") + "\nthis is not python(\n")
    poll(lambda: "plugin_load_failed" in cli.log_tail(50000), what="load error logged")
    assert "job.py:8" in cli.log_tail(50000)
    assert "Traceback (most recent call last)" in cli.log_tail(50000), "CONTRACT §3: logged with its traceback"
    tid = api.submit("job", {})
    poll(lambda: api.get_task(tid).status == "completed", what="task ran on the last good version")
    assert api.get_task(tid).result == "good"


def test_helper_module_edit__reloads_the_plugins_that_use_it(cli: Cli, api: TaskManager) -> None:
    (cli.handlers / "_common.py").write_text('GREETING = "hello"\n')
    cli.handler_file(
        "greet",
        """
        from flowd import handler
        import _common

        @handler("greet")
        def greet(task):
            return _common.GREETING
        """,
    )
    cli.worker()
    assert run(api, cli, "greet")[0] == "hello"
    (cli.handlers / "_common.py").write_text('GREETING = "bonjour"\n')
    poll(lambda: run(api, cli, "greet")[0] == "bonjour", what="helper change picked up")


def test_reload_under_load__no_task_fails_and_versions_match_the_code_that_ran(cli: Cli, api: TaskManager) -> None:
    path = cli.handler_file("job", plugin("m0"))
    cli.worker("--concurrency", "4")
    api.reload_plugins()
    versions = {"m0": version_of(path, cli.handlers)}
    ids: list[int] = []
    for i in range(1, 21):
        ids += [api.submit("job", {}) for _ in range(3)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(plugin(f"m{i}"))
        os.replace(tmp, path)  # an editor's write-via-rename
        versions[f"m{i}"] = version_of(path, cli.handlers)
        time.sleep(0.08)
    ids += [api.submit("job", {}) for _ in range(3)]
    poll(lambda: api.query_tasks(status=["pending", "running"]).total == 0, timeout=60, what="all tasks done")
    assert api.query_tasks(status="completed").total == len(ids), "no task failed because of a swap"
    for tid in ids:
        t = api.get_task(tid)
        (att,) = api.task_audit(tid)["attempts"]["items"]
        assert att["handler_version"] == versions[t.result], (t.result, att)
    poll(lambda: run(api, cli)[0] == "m20", what="the last version is live")
