"""A submit from another process wakes an idle worker at once: PostgreSQL LISTEN/NOTIFY,
SQLite a watch on the database file, MySQL/MariaDB a probe of the newest pending task."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flowd.manager import TaskManager
from tests.conftest import fresh_database
from tests.e2e.conftest import Cli

ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    return "ok"
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql"])
def test_wakeup__wakes_a_worker_whose_poll_interval_is_long(kind: str, tmp_path: Path) -> None:
    gen = fresh_database(kind, tmp_path)  # skips postgres when its URL is unset
    url = next(gen)
    cli = Cli(tmp_path, url)
    cli.handler_file("echo", ECHO)
    m = TaskManager(db_url=url, handlers_dir=str(cli.handlers), reload=False)
    try:
        cli.worker(
            env={
                "FLOWD_POLL_INTERVAL": "60",
                "FLOWD_WORKER_HEARTBEAT_INTERVAL": "60",
                "FLOWD_TASK_HEARTBEAT_INTERVAL": "60",
                "FLOWD_WORKER_HEARTBEAT_TIMEOUT": "120",
            }
        )
        deadline = time.monotonic() + 20
        while m.workers(status="active").total == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the worker's first claim found nothing; it now idles for 60 s
        tid = m.submit("echo", {})
        deadline = time.monotonic() + 10
        while m.get_task(tid).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.get_task(tid).status == "completed", "woken well before the 60 s poll\n" + cli.log_tail()
    finally:
        cli.close()
        m.close()
        for _ in gen:
            pass
