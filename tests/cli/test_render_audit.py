"""The audit views for people, rendered from fixed documents: exact text at a fixed width and zone."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from flowd.cli import render_audit
from flowd.cli.render import short_time
from tests.audit.test_summary import at, attempt, summary, task


@pytest.fixture(autouse=True)
def utc_100_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("COLUMNS", "100")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


SUMMARY = """\
workflow 1 build_site  completed  4 tasks  6 attempts  31 events  3 checkpoints
timing    created 12:00:00.000  first start +0.500s  last end +5.000s  duration 5.000s
tasks     completed 3, permanently_failed 1
attempts  completed 3, failed 2, suspended 1
workers   pod-a-1, pod-b-1

root stages
stage  attempt  started         took  outcome    worker
────────────────────────────────────────────────────────
    0        1  12:00:00.500  1.000s  suspended  pod-a-1
    1        2  12:00:04.000  1.000s  completed  pod-a-1

failed tasks (1)
task  name         status              error
────────────────────────────────────────────────────────
   3  render_page  permanently_failed  KeyError: 'posts'

critical path: 3.500s of work in a workflow of 5.000s
task  name         stage    took  0                                             5.000s
──────────────────────────────────────────────────────────────────────────────────────
   1  build_site       0  1.000s       ██████████
   2  render_page      0  2.500s                 ██████████████████████████

slowest attempts
task  attempt  stage  worker   started         took  outcome
──────────────────────────────────────────────────────────────
   2        1      0  pod-a-1  12:00:01.500  2.500s  completed
   1        1      0  pod-a-1  12:00:00.500  1.000s  suspended
   3        2      0  pod-b-1  12:00:02.000  1.000s  failed
   4        1      0  pod-a-1  12:00:01.500  1.000s  completed
   1        2      1  pod-a-1  12:00:04.000  1.000s  completed
"""


def test_summary__exact_text_with_the_critical_path_on_the_workflow_axis(capsys: pytest.CaptureFixture[str]) -> None:
    root = task(1, name="build_site", last_event_time=at(9))
    tasks = [
        root,
        task(2, 1, name="render_page"),
        task(3, 1, name="render_page", status="permanently_failed", error="KeyError: 'posts'\nTraceback"),
        task(4, 1, name="render_page"),
    ]
    attempts = [
        attempt(1, 1, 0.5, 1.5, "suspended", worker="pod-a-1"),
        attempt(2, 1, 1.5, 4.0, worker="pod-a-1"),
        attempt(3, 1, 1.5, 2.0, "failed", worker="pod-b-1", error="KeyError: 'posts'"),
        attempt(3, 2, 2.0, 3.0, "failed", worker="pod-b-1", error="KeyError: 'posts'"),
        attempt(4, 1, 1.5, 2.5, worker="pod-a-1"),
        attempt(1, 2, 4.0, 5.0, stage=1, worker="pod-a-1"),
    ]
    render_audit.summary(summary(root, tasks, attempts, 31, 3, at(10)), now=at(10))
    out = "\n".join(x.rstrip() for x in capsys.readouterr().out.splitlines()) + "\n"
    assert out == SUMMARY


def test_short_time__drops_what_the_reader_already_knows() -> None:
    now = datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
    assert short_time("2026-11-22T17:41:55.123Z", now) == "17:41:55.123"
    assert short_time("2026-11-20T17:41:55.123Z", now) == "Nov 20 17:41:55.123"
    assert short_time("2025-11-22T17:41:55.123Z", now) == "2025-11-22 17:41"
    assert short_time(None, now) == "-"


def test_duration__scaled_to_its_size() -> None:
    got = [render_audit.duration(s) for s in (None, 0.2114, 12.54, 125, 3 * 3600 + 12 * 60 + 7)]
    assert got == ["-", "0.211s", "12.5s", "2m05s", "3h12m"]


def test_event_line__one_line_cut_to_the_width(capsys: pytest.CaptureFixture[str]) -> None:
    base = {"task_id": 42, "attempt": 2, "stage": 0, "worker_id": "w", "created_at": "2026-11-22T12:00:01.500Z"}
    now = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    render_audit.event_line(
        {**base, "event_type": "task_failed", "from_status": "running", "to_status": "failed",
         "message": "ValueError: " + "x" * 200 + "\nTraceback", "metadata": {"traceback": "..."}},
        now,
    )  # fmt: skip
    render_audit.event_line(
        {**base, "event_type": "task_progress", "from_status": "running", "to_status": "running",
         "message": "m", "metadata": {"stage_name": "test", "progress_percent": 30.0, "progress_text": "step 2 of 3"}},
        now,
    )  # fmt: skip
    failed, progress = capsys.readouterr().out.splitlines()
    assert failed.startswith("12:00:01.500      42 #2   failed             running → failed     ValueError: xxx")
    assert len(failed) == 100 and failed.endswith("…")
    assert progress == "12:00:01.500      42 #2   progress           running              test 30% step 2 of 3"
