"""WorkerMetrics in-process: observer counts, queue depth on every backend, one query per refresh."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from flowd.engine.metrics import WorkerMetrics
from flowd.manager import TaskManager
from tests.engine.conftest import drain


def samples(m: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics__queue_depth_by_name_and_status_and_outcome_counters(mgr: TaskManager) -> None:
    def boom(t: Any) -> None:
        raise RuntimeError("no")

    mgr.use("ok", lambda t: 1)
    mgr.use("boom", boom)
    worker = mgr.make_worker()
    m = WorkerMetrics(worker, refresh=0)
    worker.observer = m
    for _ in range(2):
        mgr.submit("ok", {})
    mgr.submit("boom", {}, max_retries=2)
    mgr.submit("ok", {}, delay=3600)
    drain(mgr)
    mgr.pause_task(mgr.submit("ok", {}, delay=3600))
    s = samples(m)
    depth = {
        dict(labels)["status"]: v
        for (metric, labels), v in s.items()
        if metric == "flowd_queue_depth" and dict(labels)["name"] == "ok"
    }
    # finished tasks are history, not queue: only the unfinished statuses, each of them, 0 when empty
    assert set(depth) == {"pending", "running", "failed", "timeout", "paused", "suspended"}
    assert (depth["pending"], depth["paused"], depth["running"]) == (1, 1, 0)
    assert s[("flowd_queue_depth", (("name", "boom"), ("status", "pending")))] == 0
    finished = ("completed", "permanently_failed")
    assert not [k for k in s if k[0] == "flowd_queue_depth" and dict(k[1])["status"] in finished]
    assert s[("flowd_tasks_completed_total", (("name", "ok"),))] == 2
    assert s[("flowd_tasks_failed_total", (("name", "boom"),))] == 2
    assert s[("flowd_tasks_retried_total", (("name", "boom"),))] == 1
    assert s[("flowd_attempt_duration_seconds_count", (("name", "boom"), ("outcome", "failed")))] == 2
    assert s[("flowd_database_up", ())] == 1
    worker.close()


def test_metrics__a_scrape_storm_costs_one_queue_depth_query(lite: TaskManager) -> None:
    lite.use("ok", lambda t: 1)
    lite.submit("ok", {})
    worker = lite.make_worker()
    m = WorkerMetrics(worker, refresh=3600)
    statements: list[str] = []
    sa.event.listen(worker.db.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: statements.append(stmt))
    for _ in range(20):
        body = m.exposition().decode()
    grouped = [q for q in statements if "GROUP BY" in q.upper()]
    assert len(grouped) == 1, statements
    assert 'flowd_queue_depth{name="ok",status="pending"} 1.0' in body
