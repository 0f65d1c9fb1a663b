"""Constraint groups: per-key mutual exclusion and limits, cooldowns, per-key FIFO, fleet-wide."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from flowd import constraint, handler
from flowd.clock import parse_iso, utcnow
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from flowd.registry import leases
from flowd.rules.constraints import render_key
from tests.engine.conftest import drain

DNS = {"domain-mutex": {"key": "{payload[domain]}", "max_concurrent": 1, "applies_to": ["dns"]}}


def _runs(m: TaskManager, ids: list[int]) -> list[tuple[int, datetime, datetime]]:
    """(task id, started_at, ended_at) of every attempt of these tasks, by start."""
    out = []
    for tid in ids:
        for a in m.task_audit(tid)["attempts"]["items"]:
            out.append((tid, parse_iso(a["started_at"]), parse_iso(a["ended_at"])))
    return sorted(out, key=lambda r: (r[1], r[0]))


def _assert_spaced(runs: list[tuple[int, datetime, datetime]], cooldown: float) -> None:
    for (_a, _s1, end), (b, start, _e2) in itertools.pairwise(runs):
        gap = (start - end).total_seconds()
        assert gap >= cooldown, f"task {b} started {gap:.3f}s after the previous run of its key ended"


def test_render_key__missing_or_empty_is_exempt() -> None:
    assert render_key("{payload[domain]}", {"domain": "a.com"}, {}) == "a.com"
    assert render_key("{payload[domain]}", {}, {}) is None
    assert render_key("{labels[tenant]}-{payload[x]}", {"x": 1}, {"tenant": "acme"}) == "acme-1"
    assert render_key("{payload[d]}", {"d": " "}, {}) is None
    assert render_key("{payload[d]}", {"d": "x" * 300}, {}).startswith("sha256:")  # type: ignore[union-attr]


def test_mutex__one_run_per_key_at_a_time_in_submission_order(
    sqlite_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    m = make_manager(sqlite_url, constraints=DNS, max_concurrent_tasks=8)
    m.use("dns", lambda t: time.sleep(0.05) or t.payload["n"])
    a = [m.submit("dns", {"domain": "a.com", "n": i}) for i in range(4)]
    b = [m.submit("dns", {"domain": "b.com", "n": i}) for i in range(3)]
    free = [m.submit("dns", {"n": i}) for i in range(3)]  # no domain: exempt
    drain(m)
    for ids in (a, b):
        runs = _runs(m, ids)
        assert [r[0] for r in runs] == ids, "per-key FIFO"
        _assert_spaced(runs, 0.0)
    starts = [r[1] for r in _runs(m, free)]
    assert max(starts) < min(r[2] for r in _runs(m, free)), "exempt tasks ran side by side"


def test_cooldown__next_run_of_a_key_waits_until_the_cooldown_passed(
    sqlite_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    now = [utcnow()]
    groups = {"slow": {"key": "{payload[k]}", "max_concurrent": 2, "cooldown": 10}}
    m = make_manager(sqlite_url, constraints=groups, clock=lambda: now[0])
    m.use("job", lambda t: "ok")
    ids = [m.submit("job", {"k": "x"}) for _ in range(3)]
    w = m.make_worker()
    w.run_until_idle()
    done = [m.get_task(i).status for i in ids]
    assert done.count(TaskStatus.COMPLETED) == 2, "two slots: two ran, then the key cools down"
    now[0] += timedelta(seconds=9.9)
    w.run_until_idle()
    assert m.get_task(ids[2]).status is TaskStatus.PENDING
    info = m.constraints()["keys"]
    assert info == [
        {
            "group": "slow",
            "key": "x",
            "max_concurrent": 2,
            "cooldown": 10.0,
            "running": 0,
            "pending": 1,
            "cooldown_left": pytest.approx(0.1, abs=0.01),
        }
    ]
    now[0] += timedelta(seconds=0.2)
    w.run_until_idle()
    assert m.get_task(ids[2]).status is TaskStatus.COMPLETED
    _assert_spaced(_runs(m, ids)[1:], 10.0)


def test_groups_compose__a_task_runs_only_when_every_group_allows_it(
    sqlite_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    groups = {
        "per-domain": {"key": "{payload[domain]}"},
        "per-tenant": {"key": "{labels[tenant]}", "max_concurrent": 1},
    }
    m = make_manager(sqlite_url, constraints=groups)
    m.use("job", lambda t: time.sleep(0.03))
    ids = [
        m.submit("job", {"domain": "a"}, labels={"tenant": "t1"}),
        m.submit("job", {"domain": "b"}, labels={"tenant": "t1"}),
        m.submit("job", {"domain": "a"}, labels={"tenant": "t2"}),
    ]
    drain(m)
    # 0 and 1 share a tenant, 0 and 2 a domain: each pair must not overlap
    runs = {r[0]: r for r in _runs(m, ids)}
    for x, y in ((ids[0], ids[1]), (ids[0], ids[2])):
        assert runs[x][2] <= runs[y][1] or runs[y][2] <= runs[x][1]


def test_handler_constraints__declared_in_plugin_code(
    sqlite_url: str, make_manager: Callable[..., TaskManager], tmp_path: Any
) -> None:
    (tmp_path / "handlers" / "dns.py").write_text(
        "from flowd import constraint, handler\n"
        "mutex = constraint('domain-mutex', key='{payload[domain]}', max_concurrent=1, cooldown=5)\n"
        "@handler('update_dns', constraints=[mutex])\n"
        "def update_dns(task):\n"
        "    return task.payload['domain']\n"
    )
    m = make_manager(sqlite_url)
    ids = [m.submit("update_dns", {"domain": "x.org"}) for _ in range(2)]
    drain(m)
    assert [m.get_task(i).status for i in ids] == [TaskStatus.COMPLETED, TaskStatus.PENDING]
    (g,) = m.constraints()["groups"]
    assert g == {
        "name": "domain-mutex",
        "key": "{payload[domain]}",
        "max_concurrent": 1,
        "cooldown": 5.0,
        "applies_to": ["update_dns"],
        "source": "handler",
    }


def test_constraint__bad_declarations_are_refused(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        constraint("g", key="{payload[a]}", max_concurrent=0)
    with pytest.raises(ValueError, match="template"):
        constraint("g", key="static")
    with pytest.raises(ValueError, match="constraint"):
        handler("x", constraints=["not a constraint"])  # type: ignore[list-item]
    m = make_manager(sqlite_url, constraints={"bad": {"key": "{payload[a]}", "cooldown": -1}})
    m.use("job", lambda t: None)
    with pytest.raises(BadInput, match="cooldown"):
        m.submit("job", {"a": 1})
    assert m.query_tasks().total == 0


def test_recovered_task__frees_its_slot(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(sqlite_url, constraints=DNS)
    m.use("dns", lambda t: "ok")
    first, second = (m.submit("dns", {"domain": "a.com"}) for _ in range(2))
    crashed = m.make_worker()
    from flowd.engine import ops

    (claimed,) = ops.claim(m.db, "dead-worker", {"dns": 10}, 10, utcnow())
    assert claimed.id == first
    crashed.run_once()
    assert m.get_task(second).status is TaskStatus.PENDING, "the key is held by the crashed worker's run"
    leases.recover_tasks(m.db, ["dead-worker"], {"dead-worker": "dead"}, "me", utcnow())
    drain(m)
    assert m.get_task(first).status is TaskStatus.COMPLETED and m.get_task(second).status is TaskStatus.COMPLETED


def _run_until_done(managers: list[TaskManager], ids: list[int], timeout: float = 60) -> None:
    """Each manager's worker ticks on its own thread until every task is final (cooldowns park work)."""
    import threading

    deadline = time.monotonic() + timeout
    m0 = managers[0]

    def done() -> bool:
        return m0.query_tasks(status=["pending", "running"], limit=1).total == 0

    def loop(w: Any) -> None:
        while time.monotonic() < deadline and not done():
            if w.run_once() == 0:
                time.sleep(0.01)
        w.run_until_idle()

    workers = [m.make_worker() for m in managers]
    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert done(), "tasks left unfinished"


def test_invariant__mutex_and_cooldown_hold_across_three_workers(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    """Three workers (own engines) race for 3 keys; attempts of one key never overlap and keep the cooldown."""
    cooldown = 0.15
    groups = {"k": {"key": "{payload[key]}", "max_concurrent": 1, "cooldown": cooldown}}
    managers = [make_manager(db_url, constraints=groups, max_concurrent_tasks=4) for _ in range(3)]
    for m in managers:
        m.use("job", lambda t: time.sleep(0.02) or t.payload["i"])
    by_key: dict[str, list[int]] = defaultdict(list)
    for i in range(18):
        key = f"k{i % 3}"
        by_key[key].append(managers[i % 3].submit("job", {"key": key, "i": i}))
    _run_until_done(managers, [i for ids in by_key.values() for i in ids])
    m0 = managers[0]
    for ids in by_key.values():
        assert all(m0.get_task(i).status is TaskStatus.COMPLETED for i in ids)
        runs = _runs(m0, ids)
        assert [r[0] for r in runs] == ids, "per-key FIFO"
        _assert_spaced(runs, cooldown)


def test_submit_many__renders_each_items_own_key(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(sqlite_url, constraints=DNS)
    m.use("dns", lambda t: t.payload["domain"])
    ids = m.submit_many([("dns", {"domain": d}) for d in ("a.com", "a.com", "b.com")])
    keys = {(k["key"], k["pending"]) for k in m.constraints()["keys"]}
    assert keys == {("a.com", 2), ("b.com", 1)}
    drain(m)
    assert all(m.get_task(i).status is TaskStatus.COMPLETED for i in ids)
