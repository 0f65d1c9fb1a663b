"""Real worker processes: SIGSTOP/SIGCONT, graceful drain, a second signal, pod-less workers."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flowd.manager import TaskManager
from tests.e2e.conftest import Cli

SLOW = """
import os, time
from flowd import SubTasks, handler

@handler("slow")
def slow(task):
    time.sleep(task.payload.get("s", 2) if task.attempt == 1 else 0)
    return {"attempt": task.attempt, "worker": task.worker_id, "pid": os.getpid()}


@handler("crash")
def crash(task):
    os._exit(1)  # a segfault or the OOM killer, as the worker sees it: the process is gone


@handler("late")
def late(task):
    # attempt 1 is frozen mid-sleep; once thawed it tries every kind of write there is
    if task.attempt == 1:
        task.progress("before the freeze", percent=10)
        time.sleep(task.payload["s"])
        task.progress("after the freeze", percent=90)
        task.audit("after_freeze")
        return SubTasks([{"name": "slow", "payload": {"s": 0}}])
    return {"attempt": task.attempt, "worker": task.worker_id}
"""


@pytest.fixture
def api(cli: Cli) -> Iterator[TaskManager]:
    cli.handler_file("slow", SLOW)
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers), reload=False)
    yield m
    m.close()


def wait(predicate: Any, timeout: float = 30, what: str = "condition", cli: Cli | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout}s\n{cli.log_tail() if cli else ''}")


def status(m: TaskManager, tid: int) -> str:
    return str(m.get_task(tid).status)


def test_frozen_worker__recovered_by_another_pod_and_its_late_write_changes_nothing(cli: Cli, api: TaskManager) -> None:
    frozen = cli.worker(pod="a")
    tid = api.submit("slow", {"s": 3}, max_retries=1)
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    frozen.send_signal(signal.SIGSTOP)
    try:
        cli.worker(pod="b")  # reaps pod a's expired lease (2 s) and recovers the task
        done = wait(lambda: status(api, tid) == "completed" and api.get_task(tid), what="recovered", cli=cli)
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert done.result["attempt"] == 2 and done.result["pid"] != frozen.pid
    # the thawed worker's handler returns and tries to write: fenced, logged, nothing changes
    wait(lambda: "stale_write" in cli.log_tail(50000), what="late write refused", cli=cli)
    t = api.get_task(tid)
    assert t.result == done.result and t.status == "completed"
    atts = api.task_audit(tid)["attempts"]["items"]
    assert [a["outcome"] for a in atts] == ["interrupted", "completed"]
    # the thawed worker noticed it lost its lease, found no live peer in pod a, re-registered
    wait(lambda: len([w for w in api.workers(status="active").items]) == 2, what="re-registered", cli=cli)


def test_sigterm__drains_running_attempt_keeps_result_and_exits_0(cli: Cli, api: TaskManager) -> None:
    proc = cli.worker(pod="a")
    tid = api.submit("slow", {"s": 1.5})
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    t = api.get_task(tid)
    assert t.status == "completed" and t.result["attempt"] == 1
    (w,) = api.workers().items
    assert w.status == "dead"


def test_second_signal__exits_at_once_and_the_task_is_recovered_by_the_restart(cli: Cli, api: TaskManager) -> None:
    proc = cli.worker(pod="a")
    tid = api.submit("slow", {"s": 30}, max_retries=1)
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) != 0
    assert status(api, tid) == "running", "nothing was handed back: like a crash"
    cli.worker(pod="a")
    t = wait(lambda: status(api, tid) == "completed" and api.get_task(tid), what="recovered", cli=cli)
    assert t.result["attempt"] == 2 and t.retry_count == 0


def test_podless_worker_killed__task_freed_by_heartbeat_timeout_using_an_attempt(cli: Cli, api: TaskManager) -> None:
    env = {"FLOWD_TASK_HEARTBEAT_TIMEOUT": "1.5"}
    proc = cli.worker(pod=None, env=env)
    tid = api.submit("slow", {"s": 30}, max_retries=3)
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    assert api.workers().total == 0, "no registry without a pod id"
    cli.worker(pod=None, env=env)
    t = wait(lambda: status(api, tid) == "completed" and api.get_task(tid), what="freed", cli=cli)
    assert t.result["attempt"] == 2 and t.retry_count == 1
    timed = api.task_audit(tid, event_types=["task_timed_out"])["events"]["items"]
    assert timed[0]["metadata"] == {"timeout_type": "heartbeat"}


def log_count(cli: Cli, index: int, needle: str) -> int:
    return cli.logs[index].read_text(errors="replace").count(needle)


def test_frozen_worker_thawed_after_recovery__progress_checkpoint_and_children_change_nothing(
    cli: Cli, api: TaskManager
) -> None:
    frozen = cli.worker(pod="a")
    tid = api.submit("late", {"s": 2}, max_retries=1)
    wait(lambda: api.get_task(tid).progress_text == "before the freeze", what="first progress", cli=cli)
    frozen_id = api.get_task(tid).worker_id
    frozen.send_signal(signal.SIGSTOP)
    try:
        cli.worker(pod="b")  # reaps pod a's expired lease and recovers the task
        done = wait(lambda: status(api, tid) == "completed" and api.get_task(tid), what="recovered", cli=cli)
    finally:
        frozen.send_signal(signal.SIGCONT)
    # progress, checkpoint and the SubTasks outcome: three refused writes, each logged
    wait(lambda: log_count(cli, 0, '"stale_write"') >= 3, what="three late writes refused", cli=cli)
    t = api.get_task(tid)
    assert t.status == "completed" and t.result == done.result and t.result["attempt"] == 2
    assert t.progress_text != "after the freeze" and t.progress_percent != 90
    assert api.query_tasks(parent_id=tid).total == 0, "no children from the stale attempt"
    events = api.task_audit(tid, limit=1000)["events"]["items"]
    recovered = next(e for e in events if e["event_type"] == "task_recovered")
    late_by_frozen = [e for e in events if e["worker_id"] == frozen_id and e["id"] > recovered["id"]]
    assert late_by_frozen == []
    assert "task_checkpoint" not in {e["event_type"] for e in events}
    assert [a["outcome"] for a in api.task_audit(tid)["attempts"]["items"]] == ["interrupted", "completed"]


def test_frozen_worker_replaced_in_its_pod__wakes_as_standby_claims_nothing_and_exits_0(
    cli: Cli, api: TaskManager
) -> None:
    frozen = cli.worker(pod="a")
    tid = api.submit("slow", {"s": 3}, max_retries=1)
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    frozen_id = api.get_task(tid).worker_id
    frozen.send_signal(signal.SIGSTOP)
    try:
        cli.worker(pod="a")  # systemd restarted the pod elsewhere: supersedes and recovers at once
        wait(lambda: status(api, tid) == "completed", what="recovered by the new instance", cli=cli)
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait(lambda: log_count(cli, 0, '"worker_standby"') == 1, what="thawed worker stands by", cli=cli)
    later = [api.submit("slow", {"s": 0}) for _ in range(6)]
    wait(lambda: all(status(api, i) == "completed" for i in later), what="later tasks done", cli=cli)
    assert not [i for i in later if any(a["worker_id"] == frozen_id for a in api.task_audit(i)["attempts"]["items"])], (
        "a standby worker claims nothing while an active peer holds its pod"
    )
    frozen.send_signal(signal.SIGTERM)
    assert frozen.wait(20) == 0
    assert {w.worker_id: w.status for w in api.workers().items}[frozen_id] == "dead"


def test_sigterm_past_the_grace_period__hands_the_attempt_back_and_exits_0(cli: Cli, api: TaskManager) -> None:
    proc = cli.worker(pod="a", env={"FLOWD_SHUTDOWN_GRACE": "1"})
    tid = api.submit("slow", {"s": 30}, max_retries=1)
    wait(lambda: status(api, tid) == "running", what="running", cli=cli)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, "the handler still sleeps: the drain ends at the grace period, not with it"
    t = api.get_task(tid)
    assert t.status == "pending" and t.retry_count == 0 and t.worker_id is None
    (rec,) = api.task_audit(tid, event_types=["task_recovered"])["events"]["items"]
    assert rec["metadata"]["recovery_reason"] == "shutdown"
    assert [w.status for w in api.workers().items] == ["dead"]
    cli.worker(pod="a")
    done = wait(lambda: status(api, tid) == "completed" and api.get_task(tid), what="run again", cli=cli)
    assert done.result["attempt"] == 2
    assert [a["outcome"] for a in api.task_audit(tid)["attempts"]["items"]] == ["interrupted", "completed"]


def test_handler_that_kills_its_worker__permanently_failed_after_max_recoveries_deaths(
    cli: Cli, api: TaskManager
) -> None:
    tid = api.submit("crash", {}, max_retries=2)
    for death in range(1, 4):
        proc = cli.worker(pod="a")  # systemd's Restart=always: recovers the task, runs it, dies
        wait(lambda p=proc: p.poll() is not None, what=f"death {death}", cli=cli)
        assert proc.returncode == 1
    survivor = cli.worker(pod="a")  # the fourth start recovers no more: the task ends
    t = wait(lambda: status(api, tid) == "permanently_failed" and api.get_task(tid), what="given up", cli=cli)
    assert t.error is not None and "its worker died 3 times while running it" in t.error
    assert t.retry_count == 0 and t.recoveries == 3
    audit = api.task_audit(tid, limit=1000)
    assert [a["outcome"] for a in audit["attempts"]["items"]] == ["interrupted"] * 3
    events = audit["events"]["items"]
    assert [e["metadata"]["recovery_reason"] for e in events if e["event_type"] == "task_recovered"] == [
        "superseded",
        "superseded",
    ]
    (end,) = [e for e in events if e["event_type"] == "task_permanently_failed"]
    assert end["metadata"]["reason"] == "recoveries_exhausted" and end["metadata"]["recoveries"] == 3
    assert survivor.poll() is None, "the last worker never ran it: it is alive"
    assert "task_recoveries_exhausted" in cli.log_tail(50000)
