"""Constraint groups across three real worker processes, one of them SIGKILLed mid-run."""

from __future__ import annotations

import itertools
import os
import signal
from collections import defaultdict

from flowd.clock import parse_iso
from flowd.manager import TaskManager
from tests.e2e.conftest import Cli

COOLDOWN = 0.3

PLUGIN = f"""
import time
from flowd import constraint, handler

mutex = constraint("domain-mutex", key="{{payload[domain]}}", max_concurrent=1, cooldown={COOLDOWN})

@handler("update_dns", constraints=[mutex], max_retries=5)
def update_dns(task):
    time.sleep(0.15)
    return task.payload["i"]
"""


def test_mutex_and_cooldown__hold_across_processes_and_a_crash(any_cli: Cli) -> None:
    cli = any_cli
    cli.handler_file("dns", PLUGIN)
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers))
    try:
        ids = m.submit_many([("update_dns", {"domain": f"d{i % 3}.org", "i": i}) for i in range(12)])
        victim = cli.worker("--concurrency", "4", pod="a")
        for pod in ("b", "c"):
            cli.worker("--concurrency", "4", pod=pod)
        cli.wait_until(lambda: m.query_tasks(status="completed", limit=1).total >= 3, 60, "3 tasks completed")
        os.kill(victim.pid, signal.SIGKILL)  # its running attempt holds a key until it is recovered
        victim.wait(10)
        cli.wait_until(lambda: m.query_tasks(status="completed", limit=1).total == 12, 90, "all tasks completed")
        runs: dict[str, list[tuple[int, object, object, str]]] = defaultdict(list)
        for tid in ids:
            t = m.get_task(tid)
            for a in m.task_audit(tid)["attempts"]["items"]:
                runs[t.payload["domain"]].append(
                    (tid, parse_iso(a["started_at"]), parse_iso(a["ended_at"]), a["outcome"])
                )
        for domain, rs in runs.items():
            rs.sort(key=lambda r: (r[1], r[0]))
            for prev, nxt in itertools.pairwise(rs):
                gap = (nxt[1] - prev[2]).total_seconds()  # type: ignore[operator]
                assert gap >= COOLDOWN, f"{domain}: task {nxt[0]} started {gap:.3f}s after the previous run ended: {rs}"
            done = [r[0] for r in rs if r[3] == "completed"]
            assert done == sorted(done), f"{domain}: per-key FIFO"
    finally:
        m.close()
