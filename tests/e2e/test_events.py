"""`flowd events`: the audit log once, and followed live like `tail -f`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.e2e.conftest import Cli

ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    task.progress("half way", stage_name="work", percent=50)
    return task.payload
"""


def test_events__recent_then_follow_prints_new_events_as_json_lines(any_cli: Cli) -> None:
    any_cli.handler_file("echo", ECHO)
    first = any_cli.submit("echo", {"n": 1})
    once = [json.loads(x) for x in any_cli.run("events", "--json").stdout.splitlines()]
    assert [(e["task_id"], e["event_type"]) for e in once] == [(first, "task_created")]
    follower = subprocess.Popen(
        [sys.executable, "-m", "flowd", "events", "--follow", "--json", "--interval", "0.1", "--name", "echo"],
        cwd=any_cli.tmp,
        env=any_cli.env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        any_cli.worker()
        second = any_cli.submit("echo", {"n": 2})
        any_cli.wait_status(second, "completed")
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        assert follower.stdout is not None
        while time.monotonic() < deadline:
            seen.append(json.loads(follower.stdout.readline()))
            if (second, "task_completed") in {(e["task_id"], e["event_type"]) for e in seen}:
                break
        types = [e["event_type"] for e in seen if e["task_id"] == second]
        assert types[0] == "task_created" and "task_progress" in types and types[-1] == "task_completed"
        ids = [e["id"] for e in seen]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), "in order, each event once"
    finally:
        os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(10) == 0
