"""Who answers a NOTIFY: about WAKE_FANOUT workers per announced task, not the whole idle fleet."""

from __future__ import annotations

import random
from collections.abc import Callable

from flowd.engine.worker import WAKE_FANOUT
from flowd.manager import TaskManager


def test_wants_wake__a_big_fleet_sends_about_fanout_workers_per_task_a_small_one_everyone(
    sqlite_url: str, make_manager: Callable[..., TaskManager]
) -> None:
    w = make_manager(sqlite_url).make_worker()
    random.seed(20)
    w.fleet_size = 60
    answered = sum(w.wants_wake(1) for _ in range(6000)) / 6000
    assert abs(answered - WAKE_FANOUT / 60) < 0.03  # about 8 of 60 for one task
    assert all(w.wants_wake(60 // WAKE_FANOUT + 1) for _ in range(200))  # a batch wakes everyone
    w.fleet_size = WAKE_FANOUT
    assert all(w.wants_wake(1) for _ in range(200))  # a small fleet: every listener, as before
