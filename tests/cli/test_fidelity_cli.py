"""The reference's queries from the command line: `audit workflow --attempts/--events`, the
attempt filters of `audit task`, `stats --status`, and `handlers` showing a description —
on every database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowd import SubTasks
from flowd.manager import TaskManager
from tests.cli.conftest import Result
from tests.engine.conftest import drain

Run = Callable[..., Result]


def pipeline(t: Any) -> Any:
    if t.stage == 0:
        return SubTasks([{"name": "square", "payload": {"n": 2}}, {"name": "bad", "payload": {}}])
    return [k["status"] for k in t.children()]


def bad(t: Any) -> Any:
    raise ValueError("no good")


@pytest.fixture
def cli(db_url: str, flowd: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    # db_url first: the flowd fixture clears every FLOWD_* variable, the test servers' URLs included
    monkeypatch.setenv("FLOWD_DB_URL", db_url)
    return flowd


@pytest.fixture
def wf(cli: Run, db_url: str, tmp_path: Path, closers: list[Callable[[], None]]) -> int:
    """A finished workflow on the CLI's database: root, square, bad (failed twice)."""
    m = TaskManager(db_url=db_url, handlers_dir=str(tmp_path / "handlers"))
    closers.append(m.close)
    m.use({"pipeline": pipeline, "square": lambda t: t.payload["n"] ** 2, "bad": {"handler": bad, "max_retries": 2}})
    root = m.submit("pipeline", {}, tag="nightly")
    drain(m)
    return root


def test_audit_workflow_attempts__filters_and_pages(cli: Run, wf: int) -> None:
    r = cli("audit", "workflow", str(wf), "--attempts", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["task"]["id"] == wf and doc["attempts"]["total"] == 5
    failed = cli("audit", "workflow", str(wf), "--attempts", "--outcome", "failed", "--json").json()["attempts"]
    assert [(a["attempt"], a["outcome"]) for a in failed["items"]] == [(1, "failed"), (2, "failed")]
    worker = doc["attempts"]["items"][0]["worker_id"]
    mine = cli("audit", "workflow", str(wf), "--attempts", "--worker", worker, "--json").json()["attempts"]
    assert mine["total"] == 5
    assert cli("audit", "workflow", str(wf), "--attempts", "--open", "--json").json()["attempts"]["total"] == 0
    page = cli("audit", "workflow", str(wf), "--attempts", "--limit", "2", "--offset", "1", "--json").json()
    assert page["attempts"]["limit"] == 2 and page["attempts"]["has_more"] and len(page["attempts"]["items"]) == 2
    human = cli("audit", "workflow", str(wf), "--attempts", "--outcome", "failed")
    assert human.code == 0 and "attempts (2)" in human.out and "ValueError: no good" in human.out


def test_audit_workflow_events__types_worker_and_range(cli: Run, wf: int) -> None:
    doc = cli("audit", "workflow", str(wf), "--events", "--type", "task_failed", "--type", "task_resumed", "--json")
    items = doc.json()["events"]["items"]
    assert [e["event_type"] for e in items] == ["task_failed", "task_failed", "task_resumed"]
    every = cli("audit", "workflow", str(wf), "--events", "--limit", "1000", "--json").json()["events"]
    worker = next(e["worker_id"] for e in every["items"] if e["worker_id"])
    by_worker = cli("audit", "workflow", str(wf), "--events", "--worker", worker, "--limit", "1000", "--json")
    assert 0 < by_worker.json()["events"]["total"] < every["total"]
    last = every["items"][-1]["created_at"]
    tail = cli("audit", "workflow", str(wf), "--events", "--since", last, "--until", last, "--json").json()
    assert tail["events"]["total"] >= 1 and all(e["created_at"] == last for e in tail["events"]["items"])
    assert cli("audit", "workflow", str(wf), "--events", "--json").json()["events"]["limit"] == 100
    newest = cli("audit", "workflow", str(wf), "--events", "--order", "desc", "--limit", "1", "--json").json()
    assert newest["events"]["items"][0]["id"] == every["items"][-1]["id"]
    human = cli("audit", "workflow", str(wf), "--events", "--type", "task_failed")
    assert human.code == 0 and "events (2)" in human.out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--attempts", "--events"], "choose one"),
        (["--outcome", "failed"], "--outcome filters --attempts"),
        (["--type", "task_failed"], "--type filters --events"),
        (["--worker", "w"], "--worker filters --attempts or --events"),
        (["--events", "--outcome", "failed"], "--outcome filters --attempts"),
        (["--attempts", "--outcome", "exploded"], "unknown attempt outcome"),
        (["--events", "--type", "task_exploded"], "unknown event type"),
        (["--events", "--since", "yesterday"], "bad --since"),
        (["--attempts", "--limit", "0"], "limit must be positive"),
        (["--order", "desc"], "--order applies to --attempts or --events"),
        (["--events", "--order", "up"], "order must be asc or desc"),
    ],
)
def test_audit_workflow_queries__bad_input_exits_2(cli: Run, wf: int, args: list[str], needle: str) -> None:
    r = cli("audit", "workflow", str(wf), *args, "--json")
    assert r.code == 2 and needle in r.err and r.out == "", (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1


def test_audit_task__outcome_open_only_and_ranges(cli: Run, wf: int) -> None:
    bad_id = wf + 2
    every = cli("audit", "task", str(bad_id), "--json").json()["attempts"]["items"]
    assert [a["outcome"] for a in every] == ["failed", "failed"]
    got = cli("audit", "task", str(bad_id), "--outcome", "completed", "--json").json()
    assert got["attempts"]["total"] == 0 and got["events"]["total"] > 0
    assert cli("audit", "task", str(bad_id), "--open-only", "--json").json()["attempts"]["total"] == 0
    second = every[1]["started_at"]
    after = cli("audit", "task", str(bad_id), "--started-after", second, "--json").json()["attempts"]["items"]
    assert [a["attempt"] for a in after] == [2]
    first_end = every[0]["ended_at"]
    before = cli("audit", "task", str(bad_id), "--ended-before", first_end, "--json").json()["attempts"]["items"]
    assert [a["attempt"] for a in before] == [1]
    r = cli("audit", "task", str(bad_id), "--started-after", second, "--started-before", every[0]["started_at"])
    assert r.code == 2 and "--started-after is after --started-before" in r.err


def test_stats__tag_and_status(cli: Run, wf: int) -> None:
    r = cli("stats", "--tag", "nightly", "--status", "completed", "--json")
    assert r.code == 0, r.err
    # children inherit the tag
    assert r.json()["items"] == [
        {"tag": "nightly", "name": "pipeline", "status": "completed", "count": 1},
        {"tag": "nightly", "name": "square", "status": "completed", "count": 1},
    ]
    r = cli("stats", "--tag", "nightly", "--status", "permanently_failed", "--status", "completed", "--json")
    assert sorted((i["name"], i["status"]) for i in r.json()["items"]) == [
        ("bad", "permanently_failed"),
        ("pipeline", "completed"),
        ("square", "completed"),
    ]
    bad_status = cli("stats", "--status", "done")
    assert bad_status.code == 2 and "unknown status 'done'" in bad_status.err


def test_handlers__show_the_description(
    cli: Run, db_url: str, tmp_path: Path, closers: list[Callable[[], None]]
) -> None:
    (tmp_path / "handlers" / "described.py").write_text(
        "from flowd import handler\n\n"
        "@handler('resize', description='Resizes one image to a thumbnail', timeout=30)\n"
        "def resize(task):\n    return None\n"
    )
    m = TaskManager(db_url=db_url, handlers_dir=str(tmp_path / "handlers"))
    closers.append(m.close)
    w = m.make_worker()
    w.start()
    w.run_once()
    doc = cli("handlers", "--name", "resize", "--json").json()
    assert doc["items"][0]["options"] == {"description": "Resizes one image to a thumbnail", "timeout": 30.0}
    human = cli("handlers")
    assert human.code == 0 and "Resizes one image" in human.out


def test_submit_once__prints_the_same_id_after_the_task_finished(
    cli: Run, db_url: str, tmp_path: Path, closers: list[Callable[[], None]]
) -> None:
    first = cli("submit", "echo", '{"a": 1}', "--key", "setup", "--once")
    assert first.code == 0, first.err
    tid = int(first.out)
    m = TaskManager(db_url=db_url, handlers_dir=str(tmp_path / "handlers"))
    closers.append(m.close)
    drain(m)
    assert m.get_task(tid).status == "completed"
    again = cli("submit", "echo", '{"a": 2}', "--key", "setup", "--once")
    assert again.code == 0 and int(again.out) == tid
    assert m.query_tasks(name="echo").total == 1
    no_key = cli("submit", "echo", "--once")
    assert no_key.code == 2 and "--once needs --key" in no_key.err
