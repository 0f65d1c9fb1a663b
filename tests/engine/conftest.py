"""Engine fixtures: a TaskManager on a fresh database with handlers registered in code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flowd.manager import TaskManager


@pytest.fixture
def mgr(db_url: str, make_manager: Callable[..., TaskManager]) -> TaskManager:
    """A manager on each backend (fresh database)."""
    return make_manager(db_url)


@pytest.fixture
def lite(sqlite_url: str, make_manager: Callable[..., TaskManager]) -> TaskManager:
    """A manager on a fresh SQLite file."""
    return make_manager(sqlite_url)


def drain(m: TaskManager, timeout: float = 30.0) -> Any:
    """Run an in-process worker until nothing is running and nothing due is left."""
    w = m._worker or m.make_worker()
    w.run_until_idle(timeout=timeout)
    return w


def outcomes(m: TaskManager, task_id: int) -> list[str | None]:
    return [a["outcome"] for a in m.task_audit(task_id)["attempts"]["items"]]


def event_types(m: TaskManager, task_id: int) -> list[str]:
    return [e["event_type"] for e in m.task_audit(task_id)["events"]["items"]]


def run_concurrently(managers: list[TaskManager], timeout: float = 60) -> None:
    """One in-process worker per manager, all draining at once on their own threads and engines."""
    import threading

    workers = [m.make_worker() for m in managers]
    threads = [threading.Thread(target=w.run_until_idle, kwargs={"timeout": timeout}) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for w in workers:  # stragglers made runnable after a worker went idle
        w.run_until_idle()
