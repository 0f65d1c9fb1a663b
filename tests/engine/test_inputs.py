"""Inputs that used to be accepted and then break things: refused up front, the same on every
database; a task that cannot start fails alone; no error line carries SQL or parameters."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from flowd.errors import BadInput, describe
from flowd.limits import MAX_ID, MAX_SECONDS, PRIORITY_MAX, PRIORITY_MIN
from flowd.manager import TaskManager
from flowd.model import SubTasks, TaskStatus
from flowd.rules.shapes import page_json, task_json
from tests.engine.conftest import drain, outcomes


def _nothing_written(m: TaskManager) -> None:
    assert m.query_tasks().total == 0


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 1e300},
        {"timeout": 3e11},
        {"retry_interval": 1e300},
        {"delay": 1e300},
        {"key": "k", "debounce": 1e300},
        {"priority": 99999999999},
        {"priority": PRIORITY_MIN - 1},
        {"max_retries": 99999999999999},
        {"tag": "t" * 256},
        {"key": "k" * 256},
        {"labels": {"tenant": "v" * 256}},
        {"entity": ("user", "u" * 256)},
        {"tag": "\udcff"},
        {"tag": "a\x00b"},
    ],
)
def test_submit__out_of_range_values_refused_and_nothing_written(mgr: TaskManager, options: dict[str, Any]) -> None:
    mgr.use("echo", lambda t: t.payload)
    with pytest.raises(BadInput) as e:
        mgr.submit("echo", {"secret": "hunter2"}, **options)
    assert "hunter2" not in str(e.value) and "\n" not in str(e.value)
    if "debounce" not in options:
        with pytest.raises(BadInput):
            mgr.submit_many([("echo", {"secret": "hunter2"})], **options)
    if "debounce" not in options and "delay" not in options:
        with pytest.raises(BadInput):
            mgr.cron("echo", "* * * * *", {}, **options)
    _nothing_written(mgr)


def test_submit__the_ends_of_every_range_are_stored_exactly(mgr: TaskManager) -> None:
    mgr.use("echo", lambda t: t.payload)
    tag, key = "é" * 255, "k" * 255
    hi = mgr.submit(
        "echo", {}, priority=PRIORITY_MAX, max_retries=1_000_000, timeout=MAX_SECONDS, tag=tag, key=key, delay=1
    )
    lo = mgr.submit("echo", {}, priority=PRIORITY_MIN, retry_interval=MAX_SECONDS, labels={"l" * 255: "v" * 255})
    t = mgr.get_task(hi)
    assert (t.priority, t.max_retries, t.timeout, t.tag, t.key) == (PRIORITY_MAX, 1_000_000, MAX_SECONDS, tag, key)
    t = mgr.get_task(lo)
    assert (t.priority, t.retry_interval, t.labels) == (PRIORITY_MIN, MAX_SECONDS, {"l" * 255: "v" * 255})


def test_handler_options_and_settings__bounded_too(db_url: str, make_manager: Any) -> None:
    with pytest.raises(BadInput, match="timeout"):
        make_manager(db_url, timeout=1e300)
    with pytest.raises(BadInput, match="retry_interval"):
        make_manager(db_url, retry_interval=3e11)
    m = make_manager(db_url)
    with pytest.raises(Exception, match="priority"):
        m.use("echo", {"handler": lambda t: None, "options": {"priority": 2**40}})


def test_ids_and_pages_past_64_bits__bad_input_not_a_database_error(mgr: TaskManager) -> None:
    huge = 99999999999999999999999
    for call in (
        lambda: mgr.get_task(huge),
        lambda: mgr.cancel_task(huge),
        lambda: mgr.task_audit(huge),
        lambda: mgr.workflow_summary(huge),
        lambda: mgr.get_flow(huge),
        lambda: mgr.query_tasks(offset=huge),
        lambda: mgr.query_tasks(limit=huge),
        lambda: mgr.query_tasks(parent_id=huge),
        lambda: mgr.events(task_id=huge),
        lambda: mgr.task_audit(1, attempt=2**40),
    ):
        with pytest.raises(BadInput):
            call()
    from flowd.errors import NotFound

    with pytest.raises(NotFound):
        mgr.get_task(MAX_ID)  # well-formed: simply not there


def test_payload__lone_surrogate_refused_at_submit(mgr: TaskManager) -> None:
    mgr.use("echo", lambda t: t.payload)
    with pytest.raises(BadInput, match="lone surrogate"):
        mgr.submit("echo", {"a": "\ud800"})
    with pytest.raises(BadInput, match="lone surrogate"):
        mgr.submit_many([("echo", {"ok": 1}), ("echo", {"a": "\udfff"})])
    _nothing_written(mgr)


def test_result__lone_surrogate_or_too_deep_fails_the_attempt_and_list_json_still_works(mgr: TaskManager) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    mgr.use("bad", lambda t: {"a": "\ud800"} if t.payload["kind"] == "surrogate" else deep)
    s = mgr.submit("bad", {"kind": "surrogate"}, max_retries=1)
    d = mgr.submit("bad", {"kind": "deep"}, max_retries=1)
    drain(mgr)
    assert mgr.get_task(s).status is TaskStatus.PERMANENTLY_FAILED
    assert "lone surrogate" in (mgr.get_task(s).error or "")
    assert "nested too deeply" in (mgr.get_task(d).error or "")
    import json

    json.dumps(page_json(mgr.query_tasks(), task_json), ensure_ascii=False).encode("utf-8")


def test_max_payload_bytes__checked_on_every_way_in(db_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(db_url, max_payload_bytes=100)
    m.use("echo", lambda t: t.payload)
    big = {"blob": "x" * 100}
    for call in (
        lambda: m.submit("echo", big),
        lambda: m.submit_many([("echo", {}), ("echo", big)]),
        lambda: m.cron("echo", "* * * * *", big),
        lambda: m.start_flow([{"name": "echo", "payload": big}], {"name": "echo"}),
        lambda: m.start_chain([{"name": "echo"}, {"name": "echo", "payload": big}]),
    ):
        with pytest.raises(BadInput, match="max_payload_bytes=100"):
            call()
    _nothing_written(m)
    m.use("parent", lambda t: SubTasks([{"name": "echo", "payload": big}]))
    tid = m.submit("parent", {}, max_retries=1)
    drain(m)
    t = m.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED and "max_payload_bytes=100" in (t.error or "")
    assert m.submit("echo", {"blob": "x" * 80}) > 0  # within the limit


def test_worker__a_task_that_cannot_start_fails_alone_and_its_batch_runs(db_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(db_url, max_concurrent_tasks=10)
    m.use("echo", lambda t: t.payload)
    ids = [m.submit("echo", {"i": i}, max_retries=2) for i in range(5)]
    poison = ids[2]
    # a row written before options were bounded (or by hand): its deadline is past the calendar
    # (1e30: the largest round value a MySQL FLOAT column holds)
    with m.db.write() as conn:
        conn.execute(sa.text("UPDATE flowd_tasks SET timeout = 1e30 WHERE id = :id"), {"id": poison})
    w = m.make_worker()
    assert w.run_once() == 5  # one claim batch with all five
    w.run_until_idle()
    for tid in ids:
        t = m.get_task(tid)
        if tid == poison:
            assert t.status is TaskStatus.PERMANENTLY_FAILED
            assert "could not start this attempt: OverflowError" in (t.error or "")
            assert outcomes(m, tid) == ["failed", "failed"]  # retried by the normal rules
        else:
            assert (t.status, t.result) == (TaskStatus.COMPLETED, {"i": ids.index(tid)})


def test_worker__an_old_row_with_a_huge_retry_interval_does_not_jam_the_worker(db_url: str, make_manager: Any) -> None:
    m: TaskManager = make_manager(db_url)

    def boom(t: Any) -> None:
        raise RuntimeError("no")

    m.use("boom", boom)
    m.use("echo", lambda t: t.payload)
    bad = m.submit("boom", {}, max_retries=2)
    with m.db.write() as conn:
        conn.execute(sa.text("UPDATE flowd_tasks SET retry_interval = 1e30 WHERE id = :id"), {"id": bad})
    good = m.submit("echo", {"ok": True})
    drain(m)
    assert m.get_task(good).status is TaskStatus.COMPLETED
    t = m.get_task(bad)
    assert t.status is TaskStatus.PENDING and t.next_run_time is not None  # retry due in (at most) ten years


def test_database_errors__described_without_sql_or_parameters(mgr: TaskManager) -> None:
    with pytest.raises(sa.exc.DBAPIError) as caught, mgr.db.engine.connect() as conn:
        conn.execute(sa.text("SELECT x FROM flowd_no_such_table WHERE x = :secret"), {"secret": "hunter2"})
    assert "hunter2" in str(caught.value)  # SQLAlchemy's text carries the parameters
    line = describe(caught.value)
    assert "hunter2" not in line and "SELECT" not in line and "\n" not in line
    assert line.startswith("the database refused a statement")


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_logged_database_errors__sql_and_parameters_only_at_debug_level(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], level: str, shown: bool
) -> None:
    import json

    from flowd.logging import configure, get_logger

    engine = sa.create_engine(sqlite_url)
    query, params = sa.text("SELECT x FROM no_such_table WHERE x = :secret"), {"secret": "hunter" + "2"}
    configure("json", level)
    try:
        with engine.connect() as conn:
            conn.execute(query, params)  # the traceback shows this line, not the values
    except sa.exc.DBAPIError:
        get_logger("flowd.worker").exception("worker_tick_failed")
    finally:
        engine.dispose()
        configure("json", "warning", defer=True)
    [line] = capsys.readouterr().err.splitlines()
    rec = json.loads(line)
    assert rec["event"] == "worker_tick_failed" and "Traceback" in rec["exception"]
    assert ("hunter2" in rec["exception"]) is shown
    assert ("the database refused a statement" in rec["exception"]) is not shown


def test_handler_database_error__stored_without_sql_or_parameters(mgr: TaskManager) -> None:
    def query(t: Any) -> None:
        with mgr.db.engine.connect() as conn:
            conn.execute(sa.text("SELECT x FROM flowd_nothing WHERE x = :p"), {"p": t.payload["secret"]})

    mgr.use("query", query)
    tid = mgr.submit("query", {"secret": "hunter2"}, max_retries=1)
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status is TaskStatus.PERMANENTLY_FAILED
    assert (t.error or "").startswith("the database refused a statement")
    for e in mgr.task_audit(tid)["events"]["items"]:
        assert "hunter2" not in (e["message"] or "") and "hunter2" not in str(e["metadata"])
        assert "SELECT x" not in (e["message"] or "")
