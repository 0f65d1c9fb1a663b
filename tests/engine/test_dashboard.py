"""TaskManager.dashboard(): the one read behind `flowd top`, on every backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from flowd.store.schema import events as E


def wait_for(predicate: Callable[[], Any], worker: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_dashboard__workers_queue_throughput_running_failures(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    mgr = make_manager(db_url, pod_id="a")
    release = threading.Event()

    def hold(t: Any) -> str:
        t.progress("crunching", stage_name="crunch", percent=40)
        release.wait(20)
        return "done"

    def boom(t: Any) -> None:
        raise ValueError("bad input\nsecond line")

    mgr.use("ok", lambda t: 1)
    mgr.use("boom", boom)
    mgr.use("hold", hold)
    oks = [mgr.submit("ok", {}) for _ in range(3)]
    bad = mgr.submit("boom", {}, max_retries=2)
    held = mgr.submit("hold", {})
    mgr.submit("ok", {}, delay=3600)
    worker = mgr.make_worker()
    try:
        wait_for(
            lambda: (
                all(mgr.get_task(i).status is TaskStatus.COMPLETED for i in oks)
                and mgr.get_task(bad).status is TaskStatus.PERMANENTLY_FAILED
                and mgr.get_task(held).progress_percent == 40
            ),
            worker,
        )
        doc = mgr.dashboard()
    finally:
        release.set()
    worker.run_until_idle()
    worker.close()

    [w] = doc["workers"]
    assert (w["worker_id"], w["pod_id"], w["running_tasks"]) == (worker.worker_id, "a", 1)
    assert 0 < w["lease_left_seconds"] <= 2

    queue = {(q["name"], q["status"]): q["count"] for q in doc["queue"]}
    assert queue == {
        ("ok", "completed"): 3,
        ("ok", "pending"): 1,
        ("boom", "permanently_failed"): 1,
        ("hold", "running"): 1,
    }

    tp = doc["throughput"]
    assert (tp["window_seconds"], tp["bucket_seconds"], len(tp["ended"])) == (60, 5, 12)
    assert (tp["total"], sum(tp["ended"]), sum(tp["failed"])) == (5, 5, 2)  # 3 completed + 2 failed attempts

    [r] = doc["running"]
    assert (r["id"], r["name"], r["stage_name"], r["progress_percent"]) == (held, "hold", "crunch", 40)
    assert r["worker_id"] == worker.worker_id and r["elapsed_seconds"] >= 0

    assert [(f["task_id"], f["name"], f["attempt"]) for f in doc["failures"]] == [(bad, "boom", 2), (bad, "boom", 1)]
    assert doc["failures"][0]["error"].startswith("ValueError: bad input")


def test_dashboard__throughput_buckets_by_event_time(db_url: str, make_manager: Callable[..., TaskManager]) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    mgr = make_manager(db_url, clock=lambda: now)
    mgr.use("ok", lambda t: 1)
    ids = [mgr.submit("ok", {}) for _ in range(4)]
    worker = mgr.make_worker()
    worker.run_until_idle()
    worker.close()
    # age the completion events: 2 s, 31 s, 59 s and 61 s (out of the window) before `now`
    with mgr.db.engine.begin() as conn:
        for tid, ago in zip(ids, (2, 31, 59, 61), strict=True):
            conn.execute(
                sa.update(E)
                .where(E.c.task_id == tid, E.c.event_type == "task_completed")
                .values(created_at=now - timedelta(seconds=ago))
            )
    tp = mgr.dashboard()["throughput"]
    # buckets start at now-60s: 59 s ago → bucket 0, 31 s ago → bucket 5, 2 s ago → bucket 11
    assert tp["ended"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert tp["total"] == 3 and tp["failed"] == [0] * 12


def test_dashboard__refuses_a_bucket_wider_than_the_window(lite: TaskManager) -> None:
    with pytest.raises(BadInput):
        lite.dashboard(window=5, bucket=10)
