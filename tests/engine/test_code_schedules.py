"""Schedules declared in code: @handler(name, cron=..., tz=..., payload=...) under key handler:NAME."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowd import handler
from flowd.errors import BadInput
from flowd.manager import TaskManager
from flowd.model import TaskRecord, TaskStatus, TaskType
from flowd.rules.options import InvalidInput
from tests.engine.conftest import event_types

Make = Callable[..., TaskManager]
T0 = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)

REPORT = """
from flowd import handler

@handler("report", {decl}max_retries=2)
def report(task):
    return task.payload
"""


def write(plugins: Path, decl: str) -> None:
    (plugins / "report.py").write_text(textwrap.dedent(REPORT.format(decl=decl)))


def schedules(m: TaskManager) -> list[TaskRecord]:
    return list(m.query_tasks(type="cron").items)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d


def start(make_manager: Make, db_url: str, plugins: Path) -> TaskManager:
    m = make_manager(db_url, handlers_dir=str(plugins), clock=lambda: T0, reload=False)
    m.make_worker().run_once()
    return m


def test_schedule__created_at_start_under_its_key(db_url: str, make_manager: Make, plugins: Path) -> None:
    write(plugins, 'cron="0 7 * * *", tz="Europe/Berlin", payload={"kind": "daily"}, ')
    m = start(make_manager, db_url, plugins)
    (t,) = schedules(m)
    assert t.type is TaskType.CRON and t.key == "handler:report" and t.status is TaskStatus.PENDING
    assert (t.cron_expr, t.cron_tz, t.payload, t.max_retries) == ("0 7 * * *", "Europe/Berlin", {"kind": "daily"}, 2)
    # 07:00 in Berlin in January is 06:00 UTC, the day after T0 (noon)
    assert t.next_run_time == datetime(2026, 1, 11, 6, 0, tzinfo=UTC)
    # a restart changes nothing: same row, same next run
    again = start(make_manager, db_url, plugins)
    assert [(s.id, s.next_run_time) for s in schedules(again)] == [(t.id, t.next_run_time)]


def test_schedule__two_workers_starting_together_make_one(db_url: str, make_manager: Make, plugins: Path) -> None:
    write(plugins, 'cron="*/5 * * * *", ')
    managers = [make_manager(db_url, handlers_dir=str(plugins), clock=lambda: T0, reload=False) for _ in range(4)]
    workers = [m.make_worker() for m in managers]
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(w: object) -> None:
        try:
            barrier.wait()
            w.run_once()  # type: ignore[attr-defined]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert [s.key for s in schedules(managers[0])] == ["handler:report"]


def test_schedule__follows_the_code_on_reload_and_pauses_when_removed(
    db_url: str, make_manager: Make, plugins: Path
) -> None:
    write(plugins, 'cron="0 7 * * *", tz="UTC", payload={"v": 1}, ')
    m = start(make_manager, db_url, plugins)
    w = m._worker
    assert w is not None
    (t,) = schedules(m)

    write(plugins, 'cron="30 8 * * *", tz="UTC", payload={"v": 2}, ')
    assert m.reload_plugins()
    w.run_once()
    (u,) = schedules(m)
    assert u.id == t.id and (u.cron_expr, u.payload) == ("30 8 * * *", {"v": 2})
    assert u.next_run_time == datetime(2026, 1, 11, 8, 30, tzinfo=UTC)

    write(plugins, "")  # cron= removed: the schedule pauses, its history stays
    m.reload_plugins()
    w.run_once()
    (p,) = schedules(m)
    assert p.id == t.id and p.status is TaskStatus.PAUSED
    assert event_types(m, t.id)[-1] == "task_paused"

    write(plugins, 'cron="0 9 * * *", tz="UTC", ')  # back: it resumes at its next occurrence
    m.reload_plugins()
    w.run_once()
    (r,) = schedules(m)
    assert r.id == t.id and r.status is TaskStatus.PENDING and r.cron_expr == "0 9 * * *" and r.payload == {}
    assert r.next_run_time == datetime(2026, 1, 11, 9, 0, tzinfo=UTC)


def test_schedule__runs_like_any_cron_task(db_url: str, make_manager: Make) -> None:
    now = [T0]
    m = make_manager(db_url, clock=lambda: now[0], timezone="UTC")
    m.use("tick", {"handler": lambda task: task.payload["n"], "options": {"cron": "* * * * *", "payload": {"n": 7}}})
    w = m.make_worker()
    w.run_once()
    (t,) = schedules(m)
    assert t.key == "handler:tick"
    now[0] = datetime(2026, 1, 10, 12, 1, 0, tzinfo=UTC)
    w.run_until_idle()
    t = m.get_task(t.id)
    assert t.status is TaskStatus.PENDING and t.result == 7


def test_schedule__bad_declarations_are_refused_at_decoration() -> None:
    with pytest.raises(InvalidInput, match="cron expression"):
        handler("x", cron="61 * * * *")
    with pytest.raises(InvalidInput, match="time zone"):
        handler("x", cron="0 7 * * *", tz="Mars/Olympus")
    with pytest.raises(InvalidInput, match="cron"):
        handler("x", tz="UTC")
    with pytest.raises(InvalidInput, match="payload"):
        handler("x", cron="0 7 * * *", payload=[1])  # type: ignore[arg-type]


def test_schedule__bad_use_options_are_bad_input(sqlite_url: str, make_manager: Make) -> None:
    m = make_manager(sqlite_url)
    with pytest.raises((BadInput, InvalidInput)):
        m.use("y", {"handler": lambda t: None, "options": {"cron": "nope"}})
