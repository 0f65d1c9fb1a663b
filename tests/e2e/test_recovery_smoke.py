"""The headline promise, end to end: a SIGKILLed worker's task is recovered at once by its restart."""

from __future__ import annotations

import signal
from datetime import datetime

import pytest

from tests.e2e.conftest import Cli

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled

SLOW = """
import time
from flowd import handler

@handler("slow")
def slow(task):
    if task.attempt == 1:
        time.sleep(60)
    return {"attempt": task.attempt, "worker": task.worker_id}
"""


def test_sigkill_then_restart_same_pod__task_recovered_once_without_using_an_attempt(any_cli: Cli) -> None:
    any_cli.handler_file("slow", SLOW)
    first = any_cli.worker(env={"FLOWD_WORKER_HEARTBEAT_TIMEOUT": "60"})
    tid = any_cli.submit("slow", {}, "--max-retries", "1")
    any_cli.wait_status(tid, "running")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    any_cli.worker(env={"FLOWD_WORKER_HEARTBEAT_TIMEOUT": "60"})  # same pod: supersedes the dead instance
    done = any_cli.wait_status(tid, "completed", timeout=20)
    assert done["result"]["attempt"] == 2 and done["retry_count"] == 0
    audit = any_cli.json("audit", "task", str(tid))
    assert [a["outcome"] for a in audit["attempts"]["items"]] == ["interrupted", "completed"]
    rec = [e for e in audit["events"]["items"] if e["event_type"] == "task_recovered"]
    assert len(rec) == 1 and rec[0]["metadata"]["recovery_reason"] == "superseded"
    assert [e["event_type"] for e in audit["events"]["items"]].count("task_completed") == 1
    workers = any_cli.json("workers")["items"]
    assert sorted(w["status"] for w in workers) == ["active", "superseded"]
    # recovered by the new instance's registration itself, not after a lease or heartbeat timeout
    (new,) = [w for w in workers if w["status"] == "active"]
    assert rec[0]["metadata"]["recovered_by_worker_id"] == new["worker_id"]
    assert seconds_between(new["registered_at"], rec[0]["created_at"]) < 1.0


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
