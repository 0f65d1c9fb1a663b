"""The web overview's read (`TaskManager.overview`) on every backend."""

from __future__ import annotations

import time
from typing import Any


def test_overview__counts_throughput_oldest_due_workers_and_cron(db_url: str, make_manager: Any) -> None:
    m = make_manager(db_url, pod_id="a")

    def boom(task: Any) -> Any:
        raise ValueError("boom")

    m.use({"ok": lambda task: {"ok": True}, "boom": {"handler": boom, "options": {"max_retries": 1}}})
    done = [m.submit("ok", {}) for _ in range(2)]
    failed = m.submit("boom", {})
    cron = m.cron("ok", "0 3 * * *", {}, tz="UTC")
    worker = m.make_worker()
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while {m.get_task(t).status.value for t in [*done, failed]} != {"completed", "permanently_failed"}:
            assert time.monotonic() < deadline
            worker.run_once()
        # queued after the worker's last claim: nobody serves "later" or "waiting"
        m.submit("later", {}, allow_unknown=True, delay=3600)
        waiting = m.submit("waiting", {}, allow_unknown=True)
        m.submit("waiting", {}, allow_unknown=True)
        doc = m.overview(minutes=5)
    finally:
        worker.close()
    assert doc["status_counts"] == {"completed": 2, "pending": 4, "permanently_failed": 1}
    assert doc["total"] == 7
    tp = doc["throughput"]
    assert (tp["minutes"], len(tp["completed"]), len(tp["failed"])) == (5, 5, 5)
    assert (sum(tp["completed"]), sum(tp["failed"])) == (2, 1)
    assert tp["completed"][-1] == 2  # it all happened within the last minute
    assert doc["oldest_due"]["id"] == waiting and doc["oldest_due"]["waiting_seconds"] >= 0
    assert [w["pod_id"] for w in doc["workers"]] == ["a"]
    assert [(c["id"], c["cron_expr"], c["cron_tz"]) for c in doc["cron"]] == [(cron, "0 3 * * *", "UTC")]
    assert doc["cron"][0]["next_run_time"].endswith("T03:00:00.000Z")
