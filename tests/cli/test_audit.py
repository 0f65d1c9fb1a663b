"""`flowd audit task|workflow|summary` and `flowd events`: JSON shapes (CONTRACT §4), bad input, human output."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowd import SubTasks
from flowd.manager import TaskManager
from tests.cli.conftest import Result
from tests.engine.conftest import drain

Run = Callable[..., Result]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

TASK_KEYS = {
    "id", "name", "type", "status", "payload", "result", "error", "priority", "tag", "labels", "cron_expr",
    "stage", "parent_id", "root_id", "retry_count", "max_retries", "retry_interval", "timeout",
    "next_run_time", "worker_id", "current_stage_name", "progress_text", "progress_percent",
    "last_event_type", "last_event_time", "created_at", "updated_at",
}  # fmt: skip
TASK_EXTRA = {
    "cron_tz",
    "key",
    "attempt",
    "recoveries",
    "flow_id",
    "flow_step",
    "entity",
    "retry_backoff",
    "retry_max_interval",
    "retry_jitter",
}  # beyond the contract, documented in the README
PAGE_KEYS = {"items", "total", "limit", "offset", "has_more"}
EVENT_KEYS = {
    "id", "task_id", "root_id", "parent_id", "event_type", "worker_id", "attempt", "stage",
    "from_status", "to_status", "message", "metadata", "created_at",
}  # fmt: skip
ATTEMPT_KEYS = {"id", "task_id", "attempt", "worker_id", "started_at", "ended_at", "duration", "outcome", "error"}
ATTEMPT_EXTRA = {"stage", "handler_version"}


def pipeline(t: Any) -> Any:
    if t.stage == 0:
        t.progress("fanning out", stage_name="fan_out", percent=10)
        return SubTasks([{"name": "square", "payload": {"n": n}} for n in (1, 2)] + [{"name": "bad", "payload": {}}])
    return sum(k["result"] or 0 for k in t.children())


def square(t: Any) -> Any:
    t.audit("square_started", metadata={"n": t.payload["n"]})
    return t.payload["n"] ** 2


def bad(t: Any) -> Any:
    raise ValueError("no good\nsecond line of the traceback")


@pytest.fixture
def workflow(flowd: Run, tmp_path: Path) -> int:
    """A finished workflow run by an in-process worker on the CLI's database: root 1, children 2-4."""
    m = TaskManager(db_url=f"sqlite:///{tmp_path / 'flowd.db'}", handlers_dir=str(tmp_path / "handlers"))
    m.use("pipeline", pipeline)
    m.use("square", square)
    m.use("bad", {"handler": bad, "options": {"max_retries": 2}})
    root = m.submit("pipeline", {})
    drain(m)
    m.close()
    return root


def keys_ok(doc: dict[str, Any], contract: set[str], extra: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert contract <= set(doc) <= contract | extra, set(doc) ^ contract


def test_audit_task_json__task_events_and_attempts_pages(flowd: Run, workflow: int) -> None:
    res = flowd("audit", "task", "4", "--json")
    assert res.code == 0 and res.err == ""
    doc = res.json()
    assert set(doc) == {"task", "events", "attempts"}
    keys_ok(doc["task"], TASK_KEYS, TASK_EXTRA)
    assert doc["task"]["status"] == "permanently_failed" and doc["task"]["root_id"] == workflow
    for page in (doc["events"], doc["attempts"]):
        assert set(page) == PAGE_KEYS and page["offset"] == 0 and page["has_more"] is False
    for e in doc["events"]["items"]:
        keys_ok(e, EVENT_KEYS)
        assert ISO.match(e["created_at"])
    types = [e["event_type"] for e in doc["events"]["items"]]
    assert types[0] == "task_created" and types[-1] == "task_permanently_failed"
    assert types.count("task_failed") == 2 and "task_retry_scheduled" in types
    attempts = doc["attempts"]["items"]
    for a in attempts:
        keys_ok(a, ATTEMPT_KEYS, ATTEMPT_EXTRA)
        assert ISO.match(a["started_at"]) and ISO.match(a["ended_at"]) and isinstance(a["duration"], float)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "failed")]
    assert attempts[0]["error"].startswith("ValueError: no good") or "no good" in attempts[0]["error"]


def test_audit_task_json__event_metadata_is_always_an_object(flowd: Run, workflow: int) -> None:
    events = flowd("audit", "task", "2", "--json").json()["events"]["items"]
    assert "task_completed" in [e["event_type"] for e in events]
    assert all(isinstance(e["metadata"], dict) for e in events), events  # {} when the event has none


def test_audit_task_json__filters_and_pages(flowd: Run, workflow: int) -> None:
    doc = flowd("audit", "task", "4", "--json", "--attempt", "2", "--event-type", "task_failed").json()
    assert [(e["event_type"], e["attempt"]) for e in doc["events"]["items"]] == [("task_failed", 2)]
    assert [a["attempt"] for a in doc["attempts"]["items"]] == [2]
    page = flowd("audit", "task", "4", "--json", "--limit", "2", "--offset", "1", "--order", "desc").json()["events"]
    assert len(page["items"]) == 2 and page["has_more"] is True and (page["limit"], page["offset"]) == (2, 1)
    ids = [e["id"] for e in page["items"]]
    assert ids == sorted(ids, reverse=True)
    checkpoints = flowd("audit", "task", "2", "--json", "--event-type", "task_checkpoint").json()["events"]
    (cp,) = checkpoints["items"]
    assert cp["metadata"] == {"n": 1, "code": "square_started"} and cp["message"] == "square_started"


def test_audit_workflow_json__root_every_task_and_event(flowd: Run, workflow: int) -> None:
    doc = flowd("audit", "workflow", "3", "--json").json()  # any member finds its workflow
    assert set(doc) == {"task", "tasks", "events"}
    assert doc["task"]["id"] == workflow
    assert set(doc["tasks"]) == PAGE_KEYS and set(doc["events"]) == PAGE_KEYS
    assert [t["id"] for t in doc["tasks"]["items"]] == [1, 2, 3, 4]
    assert {e["task_id"] for e in doc["events"]["items"]} == {1, 2, 3, 4}
    assert all(e["root_id"] == workflow for e in doc["events"]["items"])


def test_audit_summary_json__the_contract_shape(flowd: Run, workflow: int) -> None:
    doc = flowd("audit", "summary", str(workflow), "--json").json()
    assert set(doc) == {
        "root_task", "totals", "status_counts", "attempt_outcome_counts", "workers", "timing",
        "stage_timings", "failed_tasks", "critical_path", "slowest_attempts",
    }  # fmt: skip
    keys_ok(doc["root_task"], TASK_KEYS, TASK_EXTRA)
    assert set(doc["totals"]) == {"tasks", "attempts", "events", "checkpoints"}
    assert doc["totals"]["tasks"] == 4 and doc["totals"]["attempts"] == 6 and doc["totals"]["checkpoints"] == 2
    assert doc["status_counts"] == {"completed": 3, "permanently_failed": 1}
    assert doc["attempt_outcome_counts"] == {"completed": 3, "failed": 2, "suspended": 1}
    assert len(doc["workers"]) == 1
    assert set(doc["timing"]) == {
        "created_at", "first_started_at", "last_ended_at", "last_event_time", "workflow_duration_seconds"
    }  # fmt: skip
    assert all(ISO.match(v) for k, v in doc["timing"].items() if k != "workflow_duration_seconds")
    assert [(s["stage"], s["attempt"], s["outcome"]) for s in doc["stage_timings"]] == [
        (0, 1, "suspended"),
        (1, 2, "completed"),
    ]
    for s in doc["stage_timings"]:
        assert set(s) == {"stage", "attempt", "started_at", "ended_at", "duration_seconds", "outcome", "worker_id"}
    (failed,) = doc["failed_tasks"]
    assert set(failed) == {"task_id", "name", "status", "error"} and failed["task_id"] == 4
    cp = doc["critical_path"]
    assert set(cp) == {"total_duration_seconds", "nodes"} and cp["nodes"][0]["task_id"] == workflow
    for n in cp["nodes"]:
        assert set(n) == {
            "task_id", "name", "status", "stage", "attempt", "outcome", "duration_seconds", "started_at", "ended_at"
        }  # fmt: skip
    assert 1 <= len(doc["slowest_attempts"]) <= 5
    for a in doc["slowest_attempts"]:
        keys_ok(a, ATTEMPT_KEYS | {"duration_seconds"}, ATTEMPT_EXTRA)


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "task", "1", "--limit", "0"],
        ["audit", "task", "1", "--offset", "-1"],
        ["audit", "task", "1", "--order", "up"],
        ["audit", "task", "1", "--event-type", "task_exploded"],
        ["audit", "task", "1", "--attempt", "0"],
        ["audit", "task", "1", "--since", "yesterday"],
        ["audit", "task", "1", "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
        ["audit", "task", "x"],
        ["audit", "workflow", "1", "--limit", "0"],
        ["audit", "workflow", "1", "--offset", "-2", "--json"],
        ["events", "--limit", "0"],
        ["events", "--interval", "0", "--follow"],
    ],
)
def test_bad_audit_values__exit_2_with_one_line(flowd: Run, workflow: int, args: list[str]) -> None:
    res = flowd(*args)
    assert res.code == 2, res
    assert res.out == "" and len(res.err.strip().splitlines()) <= 3


@pytest.mark.parametrize("kind", ["task", "workflow", "summary"])
def test_audit_unknown_task__exit_1(flowd: Run, workflow: int, kind: str) -> None:
    res = flowd("audit", kind, "999")
    assert res.code == 1 and "task 999 not found" in res.err and res.out == ""


def _lines(out: str) -> list[str]:
    return [x.rstrip() for x in out.splitlines()]


def test_audit_task_human__snapshot_attempts_and_timeline_fit_100_columns(
    flowd: Run, workflow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    res = flowd("audit", "task", "4")
    assert res.code == 0, res.err
    lines = _lines(res.out)
    assert max(len(x) for x in lines) <= 100
    assert re.match(
        r"task 4 bad  permanently_failed  async  stage 0  attempt 2  retry_count 1  max_retries 2$", lines[0]
    )
    assert any(re.match(r"error +ValueError: no good$", x) for x in lines)
    assert ("attempts (2)" in lines and "events (12)" in lines) or "events (" in res.out
    attempt_rows = [x for x in lines if re.match(r"^[12] +0 +\S+ +\d\d:\d\d:\d\d\.\d{3} +\d+\.\d{3}s +failed", x)]
    assert len(attempt_rows) == 2 and all("ValueError: no good" in x for x in attempt_rows)
    assert "second line" not in res.out, "only the error's first line"
    assert any(re.search(r"\bfailed +running → failed +0 +1 +ValueError: no good", x) for x in lines)
    assert any(re.search(r"retry_scheduled +failed → pending", x) for x in lines)
    assert any(re.search(r"permanently_failed +failed → permanently_failed", x) for x in lines)
    cp = flowd("audit", "task", "2").out
    assert re.search(r"checkpoint +running +0 +1 +square_started \{\"n\":1\}", cp)
    root = flowd("audit", "task", "1").out
    assert re.search(r"progress +running +0 +1 +fan_out 10% fanning out", root)
    assert re.search(r"subtasks_created +running → suspended", root)


def test_audit_workflow_human__tree_with_the_failed_task_and_its_error(
    flowd: Run, workflow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    lines = _lines(flowd("audit", "workflow", "2").out)
    assert re.match(r"pipeline #1 completed  stage 1  2 attempts  \d+\.\d{3}s$", lines[0])
    assert re.match(r"├── square #2 completed  stage 0  1 attempt  ", lines[1])
    assert re.match(r"└── bad #4 permanently_failed  stage 0  2 attempts  \S+  ValueError: no good$", lines[3])
    assert lines[-1] == "3 completed  1 permanently_failed"


def test_audit_summary_human__counts_failures_and_critical_path_bars(
    flowd: Run, workflow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    res = flowd("audit", "summary", "1")
    lines = _lines(res.out)
    assert max(len(x) for x in lines) <= 100
    assert re.match(r"workflow 1 pipeline  completed  4 tasks  6 attempts  \d+ events  2 checkpoints$", lines[0])
    assert any(re.match(r"tasks +completed 3, permanently_failed 1$", x) for x in lines)
    assert any(re.match(r"attempts +completed 3, failed 2, suspended 1$", x) for x in lines)
    assert "failed tasks (1)" in lines
    assert any(re.match(r"4 +bad +permanently_failed +ValueError: no good$", x.strip()) for x in lines)
    head = next(i for i, x in enumerate(lines) if x.startswith("critical path: "))
    bars = [x for x in lines[head:] if "█" in x]
    assert bars and bars[0].lstrip().startswith("1 ")
    # one axis for every bar: the root's creation to the workflow's end, inside the timeline column
    axis = lines[head + 1]
    assert re.search(r"took +0 +\d+\.\d{3}s$", axis)
    assert all(x.index("█") >= axis.index(" 0 ") + 1 and len(x) <= len(axis) for x in bars)
    assert "slowest attempts" in lines


def test_list_human__running_task_shows_its_progress(
    flowd: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setenv("COLUMNS", "100")
    release = threading.Event()
    reported = threading.Event()

    def slow(t: Any) -> str:
        t.progress("copying files", stage_name="copy", percent=40)
        reported.set()
        release.wait(30)
        return "done"

    m = TaskManager(db_url=f"sqlite:///{tmp_path / 'flowd.db'}", handlers_dir=str(tmp_path / "handlers"))
    m.use("slow", slow)
    tid = m.submit("slow", {})
    w = m.make_worker()
    try:
        w.run_once()
        assert reported.wait(20)
        out = flowd("list").out
        row = next(x for x in out.splitlines() if re.match(rf" *{tid} +slow ", x))
        assert "running" in row and "███░░░░░  40% copy copying files" in row
    finally:
        release.set()
        w.run_until_idle()
        m.close()
    row = next(x for x in flowd("list").out.splitlines() if re.match(rf" *{tid} +slow ", x))
    assert "completed" in row and "%" not in row


def test_events_human__recent_events_one_line_each_with_from_to(
    flowd: Run, workflow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    lines = _lines(flowd("events", "--task", "4", "--limit", "3").out)
    assert len(lines) == 3 and all(len(x) <= 100 for x in lines)
    assert re.search(r" 4 #2 +retry_started +running +retry 1$", lines[0])
    assert re.search(r" 4 #2 +failed +running → failed +ValueError: no good", lines[1])
    assert re.search(r" 4 #2 +permanently_failed +failed → permanently_failed +ValueError: no good", lines[2])
    names = _lines(flowd("events", "--name", "square", "--limit", "100").out)
    assert {x.split()[1] for x in names} == {"2", "3"}
