"""Debounce: a burst of keyed submissions becomes one run, after the burst, with the last payload."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from flowd.clock import utcnow
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskStatus
from tests.engine.conftest import event_types


def test_debounce__burst_replaces_payload_and_pushes_the_start(
    db_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    now = [utcnow()]
    m = make_manager(db_url, clock=lambda: now[0])
    m.use("sync", lambda t: t.payload["v"])
    first = m.submit("sync", {"v": 1}, key="user-7", debounce=5)
    for v in (2, 3):
        now[0] += timedelta(seconds=3)
        assert m.submit("sync", {"v": v}, key="user-7", debounce=5) == first
    w = m.make_worker()
    now[0] += timedelta(seconds=4.9)
    w.run_once(now[0])
    w.run_until_idle()
    assert m.get_task(first).status is TaskStatus.PENDING, "still inside the window of the last submission"
    now[0] += timedelta(seconds=0.2)
    w.run_once(now[0])
    w.run_until_idle()
    t = m.get_task(first)
    assert t.status is TaskStatus.COMPLETED and t.result == 3
    assert m.query_tasks(name="sync").total == 1
    assert event_types(m, first).count("task_updated") == 2
    # after the run, the next burst starts a new task
    assert m.submit("sync", {"v": 4}, key="user-7", debounce=5) != first


def test_debounce__needs_a_key_and_no_delay(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> None:
    m = make_manager(sqlite_url)
    m.use("sync", lambda t: None)
    with pytest.raises(BadInput, match="debounce needs key"):
        m.submit("sync", {}, debounce=5)
    with pytest.raises(BadInput, match="delay"):
        m.submit("sync", {}, key="k", debounce=5, delay=1)
    with pytest.raises(BadInput, match="debounce"):
        m.submit("sync", {}, key="k", debounce=-1)
    assert m.query_tasks().total == 0
