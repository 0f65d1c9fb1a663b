"""The fleet-wide handler registry: workers publish what they serve; submit resolves by it.

A "CLI" manager here has an empty plugin directory of its own, like a CLI on another machine
than the workers; expiry is tested by ageing rows with one UPDATE, not by sleeping.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.clock import after
from flowd.errors import BadInput
from flowd.manager import TaskManager

Make = Callable[..., TaskManager]

RESIZE = """
from flowd import handler

@handler("resize", timeout=7, max_retries=5, priority=3, max_concurrent=2)
def resize(task):
    return "{marker}"
"""


def sql(m: TaskManager, statement: str, **params: Any) -> None:
    with m.db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def count_tasks(m: TaskManager) -> int:
    return int(m.query_tasks(limit=1).total)


@pytest.fixture
def fleet(db_url: str, make_manager: Make, tmp_path: Path) -> tuple[TaskManager, TaskManager, Path]:
    """(a worker's manager with resize.py in its plugin dir, a CLI's manager with an empty dir, the dir)."""
    plugins = tmp_path / "worker-plugins"
    plugins.mkdir()
    (plugins / "resize.py").write_text(textwrap.dedent(RESIZE.format(marker="v1")))
    empty = tmp_path / "cli-plugins"
    empty.mkdir()
    return make_manager(db_url, handlers_dir=str(plugins)), make_manager(db_url, handlers_dir=str(empty)), plugins


def test_worker__publishes_name_options_version_and_file(fleet: tuple[TaskManager, TaskManager, Path]) -> None:
    wm, cli, _ = fleet
    w = wm.make_worker()
    w.run_once()
    (h,) = cli.fleet_handlers()
    spec = wm.registry().get("resize")
    assert spec is not None
    assert (h.name, h.worker_id, h.version, h.source) == ("resize", w.worker_id, spec.version, "resize.py")
    assert h.options == {"timeout": 7.0, "max_retries": 5, "priority": 3, "max_concurrent": 2}
    assert cli.fleet_handlers("other") == []


def test_submit__applies_the_fleet_handler_defaults_when_no_local_file_declares_it(
    fleet: tuple[TaskManager, TaskManager, Path],
) -> None:
    wm, cli, _ = fleet
    wm.make_worker().run_once()
    t = cli.get_task(cli.submit("resize", {"w": 1}))
    assert (t.timeout, t.max_retries, t.priority) == (7.0, 5, 3)
    mine = cli.get_task(cli.submit("resize", {}, priority=9))
    assert (mine.priority, mine.max_retries) == (9, 5), "options given at submit win"


def test_submit__of_a_name_nobody_serves_is_refused_unless_allowed(
    fleet: tuple[TaskManager, TaskManager, Path],
) -> None:
    wm, cli, _ = fleet
    wm.make_worker().run_once()
    with pytest.raises(BadInput, match="allow_unknown=True") as e:
        cli.submit("nope", {})
    assert "resize" in str(e.value), "the hint lists the names the fleet serves"
    with pytest.raises(BadInput):
        cli.cron("nope", "* * * * *", {})
    assert count_tasks(cli) == 0, "nothing written"
    t = cli.get_task(cli.submit("nope", {}, allow_unknown=True))
    assert (t.name, t.max_retries, t.timeout) == ("nope", cli.settings.max_retries, cli.settings.timeout)


def test_expired_rows__are_not_served_and_the_worker_heartbeat_republishes(
    fleet: tuple[TaskManager, TaskManager, Path],
) -> None:
    wm, cli, _ = fleet
    w = wm.make_worker()
    w.run_once()
    sql(cli, "UPDATE flowd_handlers SET expires_at = 0")
    assert cli.fleet_handlers() == []
    with pytest.raises(BadInput):
        cli.submit("resize", {})
    # meanwhile another worker's publication purges the expired rows; the heartbeat republishes
    other = cli.make_worker()
    other.run_once()
    w.run_once(after(w.clock(), wm.settings.worker_heartbeat_interval + 0.1))
    assert [h.name for h in cli.fleet_handlers()] == ["resize"]


def test_dead_or_stopped_workers__drop_out_of_the_listing(fleet: tuple[TaskManager, TaskManager, Path]) -> None:
    wm, cli, _ = fleet
    w = wm.make_worker()
    w.run_once()
    sql(
        cli,
        "INSERT INTO flowd_workers (worker_id, status, host, pid, registered_at, last_seen_at, expires_at)"
        " VALUES (:w, 'dead', 'h', 1, 0, 0, 0)",
        w=w.worker_id,
    )
    assert cli.fleet_handlers() == [], "a worker the registry knows as dead serves nothing"
    sql(cli, "DELETE FROM flowd_workers")
    assert len(cli.fleet_handlers()) == 1
    w.close()
    assert cli.fleet_handlers() == [], "a clean stop withdraws the rows"


def test_reload__republishes_the_new_version_and_drops_deleted_files(
    fleet: tuple[TaskManager, TaskManager, Path],
) -> None:
    wm, cli, plugins = fleet
    w = wm.make_worker()
    w.run_once()
    v1 = cli.fleet_handlers()[0].version
    (plugins / "resize.py").write_text(textwrap.dedent(RESIZE.format(marker="v2")))
    (plugins / "crop.py").write_text("from flowd import handler\n\n@handler('crop')\ndef crop(task):\n    return 1\n")
    assert wm.reload_plugins()
    w.run_once()
    served = {h.name: h.version for h in cli.fleet_handlers()}
    assert set(served) == {"resize", "crop"} and served["resize"] not in (None, v1)
    (plugins / "resize.py").unlink()
    wm.reload_plugins()
    w.run_once()
    assert [h.name for h in cli.fleet_handlers()] == ["crop"]
    with pytest.raises(BadInput):
        cli.submit("resize", {})


FAN = """
from flowd import SubTasks, handler

@handler("fan")
def fan(task):
    if task.stage == 0:
        return SubTasks([{"name": task.payload["child"], "payload": {"w": 2}}])
    return [(c["name"], c["status"], c["result"]) for c in task.children()]
"""


def test_children__may_name_a_handler_only_other_workers_serve(
    fleet: tuple[TaskManager, TaskManager, Path], db_url: str, make_manager: Make, tmp_path: Path
) -> None:
    wm, _, _ = fleet
    resizer = wm.make_worker()
    resizer.run_once()  # publishes `resize`
    plugins = tmp_path / "fan-plugins"
    plugins.mkdir()
    (plugins / "fan.py").write_text(textwrap.dedent(FAN))
    fm = make_manager(db_url, handlers_dir=str(plugins))
    fanner = fm.make_worker()
    tid = fm.submit("fan", {"child": "resize"})
    fanner.run_until_idle()
    assert fm.get_task(tid).status.value == "suspended"
    (child,) = fm.query_tasks(parent_id=tid).items
    # resolved with the options the `resize` workers publish
    assert (child.name, child.timeout, child.max_retries, child.priority) == ("resize", 7.0, 5, 3)
    resizer.run_until_idle()
    fanner.run_until_idle()
    done = fm.get_task(tid)
    assert done.status.value == "completed" and done.result == [["resize", "completed", "v1"]]


def test_children__naming_a_handler_nobody_serves_fail_the_parent_attempt(
    fleet: tuple[TaskManager, TaskManager, Path], db_url: str, make_manager: Make, tmp_path: Path
) -> None:
    wm, _, _ = fleet
    wm.make_worker().run_once()
    plugins = tmp_path / "fan-plugins"
    plugins.mkdir()
    (plugins / "fan.py").write_text(textwrap.dedent(FAN))
    fm = make_manager(db_url, handlers_dir=str(plugins))
    tid = fm.submit("fan", {"child": "nobody"}, max_retries=1)
    fm.make_worker().run_until_idle()
    t = fm.get_task(tid)
    assert t.status.value == "permanently_failed"
    assert "no handler named 'nobody'" in (t.error or "") and "resize" in (t.error or ""), t.error
    assert fm.query_tasks(parent_id=tid).total == 0
