"""Priority aging: an old low-priority task eventually outranks a stream of new high-priority ones."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from flowd.clock import utcnow
from flowd.engine import ops
from flowd.manager import TaskManager


def _stream(m: TaskManager, now: list[datetime], ticks: int, aging: float | None) -> int | None:
    """Each second a new priority-5 task arrives and one slot frees: the tick the old task ran."""
    old = m.submit("job", {"old": True}, priority=0)
    for tick in range(ticks):
        m.submit("job", {"tick": tick}, priority=5)
        (claimed,) = ops.claim(m.db, "w1", {"job": 1}, 1, now[0], aging=aging)
        if claimed.id == old:
            return tick
        now[0] += timedelta(seconds=1)
    return None


@pytest.mark.parametrize("aging", [None, 1.0])
def test_aging__old_low_priority_task_is_not_starved(
    db_url: str, make_manager: Callable[..., TaskManager], aging: float | None
) -> None:
    now = [utcnow()]
    m = make_manager(db_url, clock=lambda: now[0])
    m.use("job", lambda t: "ok")
    ran_at = _stream(m, now, 10, aging)
    if aging is None:
        assert ran_at is None, "without aging the stream of priority-5 tasks starves it"
    else:
        # after 5 s of waiting it counts as priority 5, ties go to the task due first
        assert ran_at == 5


def test_aging__setting_reaches_the_worker_claim(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    now = [utcnow()]
    m = make_manager(sqlite_url, clock=lambda: now[0], max_concurrent_tasks=1, priority_aging=2.0)
    m.use("job", lambda t: "ok")
    old = m.submit("job", {}, priority=0)
    now[0] += timedelta(seconds=3)
    new = m.submit("job", {}, priority=1)
    w = m.make_worker()
    w.run_once(now[0])
    assert [a.task.id for a in w.running.values()] == [old], "waited 3 s: 0 + 1 step ties 1, and it was due first"
    w.run_until_idle()
    assert m.get_task(new).status.value == "completed"
