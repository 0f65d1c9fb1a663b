"""The CLI contract: outputs, --json documents, exit codes, and refusals that write nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Result

Run = Callable[..., Result]


def test_submit__prints_the_id_alone(flowd: Run) -> None:
    r = flowd("submit", "echo", '{"x": 1}')
    assert r.code == 0 and r.out == "1\n" and r.err == ""


NOISY = """
print("imported noisy")
from flowd import handler

@handler("noisy")
def noisy(task):
    return None
"""


def test_plugin_import_output__never_reaches_stdout(flowd: Run, tmp_path: Path) -> None:
    (tmp_path / "handlers" / "noisy.py").write_text(NOISY)
    r = flowd("submit", "noisy", "{}")
    assert r.code == 0 and r.out == "1\n" and "imported noisy" in r.err
    assert flowd("submit", "echo", "{}", "--json").json()["id"] == 2
    assert flowd("cron", "noisy", "* * * * *", "--json").json()["type"] == "cron"
    assert flowd("doctor", "--json").json()["checks"]


def test_submit_json__prints_one_task_document_with_handler_defaults(flowd: Run) -> None:
    doc = flowd("submit", "echo", '{"x": 1}', "--json", "--tag", "t1", "--label", "tenant=acme").json()
    assert doc["status"] == "pending" and doc["payload"] == {"x": 1}
    assert (doc["timeout"], doc["max_retries"], doc["priority"]) == (7.0, 2, 4), "handler options apply from the CLI"
    assert doc["tag"] == "t1" and doc["labels"] == {"tenant": "acme"}
    assert doc["created_at"].endswith("Z") and len(doc["created_at"]) == 24


def test_submit_options__override_handler_defaults(flowd: Run) -> None:
    doc = flowd("submit", "echo", "{}", "--json", "--timeout", "3", "--max-retries", "5", "--priority", "1").json()
    assert (doc["timeout"], doc["max_retries"], doc["priority"]) == (3.0, 5, 1)


def test_payload__from_stdin_and_from_file(flowd: Run, tmp_path: Path) -> None:
    assert flowd("submit", "echo", "-", "--json", stdin='{"a": 2}').json()["payload"] == {"a": 2}
    (tmp_path / "p.json").write_text('{"b": 3}')
    assert flowd("submit", "echo", "@p.json", "--json").json()["payload"] == {"b": 3}


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "echo", "{not json"],
        ["submit", "echo", "[1, 2]"],
        ["submit", "echo", "{}", "--delay", "-5"],
        ["submit", "echo", "{}", "--max-retries", "0"],
        ["submit", "echo", "{}", "--timeout", "0"],
        ["submit", "echo", "{}", "--timeout", "-1"],
        ["submit", "nope", "{}"],
        ["submit", "bad name!", "{}"],
        ["submit", "echo", "@missing.json"],
        ["submit", "echo", "{}", "--label", "novalue"],
        ["submit", "echo", "{}", "--bogus"],
        ["cron", "echo", "61 * * * *", "{}"],
        ["cron", "echo", "not a cron", "{}"],
        ["cron", "echo", "0 0 30 2 *", "{}"],
        ["cron", "echo", "* * * * *", "{}", "--tz", "Mars/Base"],
        ["list", "--status", "nosuch"],
        ["list", "--limit", "0"],
        ["list", "--offset", "-1"],
        ["delete", "--status", "completed"],
    ],
)
def test_bad_input__exit_2_one_line_and_nothing_written(flowd: Run, args: list[str]) -> None:
    r = flowd(*args)
    assert r.code == 2, (args, r)
    assert r.err.startswith("flowd: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    assert flowd("list", "--json").json()["total"] == 0


def test_unknown_name__lists_the_known_ones(flowd: Run) -> None:
    assert "known: echo" in flowd("submit", "nope").err


@pytest.mark.parametrize(
    "args",
    [
        ["show", "99"],
        ["pause", "99"],
        ["resume", "99"],
        ["cancel", "99"],
        ["audit", "task", "99"],
        ["audit", "summary", "99"],
    ],
)
def test_not_found__exit_1(flowd: Run, args: list[str]) -> None:
    r = flowd(*args)
    assert r.code == 1 and "not found" in r.err


def test_refused_transition__exit_1_and_names_allowed_statuses(flowd: Run) -> None:
    flowd("submit", "echo", "{}")
    r = flowd("resume", "1")
    assert r.code == 1 and "it is pending" in r.err


def test_pause_resume_cancel__print_the_new_status(flowd: Run) -> None:
    flowd("submit", "echo", "{}")
    assert flowd("pause", "1").out == "task 1 paused\n"
    assert flowd("resume", "1", "--json").json()["status"] == "pending"
    assert flowd("cancel", "1", "--reason", "not needed").out == "task 1 permanently_failed\n"
    assert flowd("show", "1", "--json").json()["error"] == "not needed"


def test_retry__only_a_failure_goes_back_to_pending(flowd: Run) -> None:
    flowd("submit", "echo", "{}")
    r = flowd("retry", "1")
    assert r.code == 1 and "cannot retry task 1: it is pending" in r.err
    flowd("cancel", "1")
    assert flowd("retry", "1").out == "task 1 pending\n"
    t = flowd("show", "1", "--json").json()
    assert (t["status"], t["retry_count"]) == ("pending", 0)


def test_list__filters_and_pages(flowd: Run) -> None:
    for i in range(5):
        flowd("submit", "echo", f'{{"i": {i}}}', "--tag", "a" if i % 2 else "b")
    page = flowd("list", "--tag", "a", "--json").json()
    assert page["total"] == 2 and [t["payload"]["i"] for t in page["items"]] == [3, 1], "newest first"
    page = flowd("list", "--limit", "2", "--offset", "2", "--json").json()
    assert (page["total"], len(page["items"]), page["has_more"], page["limit"], page["offset"]) == (5, 2, True, 2, 2)
    assert flowd("list", "--label", "x=y", "--json").json()["total"] == 0


def test_list_human__is_a_table(flowd: Run) -> None:
    flowd("submit", "echo", "{}")
    out = flowd("list").out
    assert "echo" in out and "pending" in out and "1 task(s)" in out


def test_stats_and_delete(flowd: Run) -> None:
    flowd("submit", "echo", "{}", "--tag", "x")
    flowd("submit", "echo", "{}", "--tag", "x")
    flowd("cancel", "2")
    items = flowd("stats", "--json").json()["items"]
    assert {(i["tag"], i["name"], i["status"], i["count"]) for i in items} == {
        ("x", "echo", "pending", 1),
        ("x", "echo", "permanently_failed", 1),
    }
    assert flowd("delete", "--status", "permanently_failed", "--yes", "--json").json() == {"deleted": 1}
    assert flowd("audit", "task", "2").code == 1, "audit rows go with the task"
    assert flowd("delete", "--all", "--yes").out == "1\n"


def test_cron__prints_the_id_and_lists_as_cron(flowd: Run) -> None:
    assert flowd("cron", "echo", "*/10 * * * * *", '{"k": 1}', "--tz", "UTC").out == "1\n"
    t = flowd("list", "--type", "cron", "--json").json()["items"][0]
    assert t["type"] == "cron" and t["cron_expr"] == "*/10 * * * * *" and t["next_run_time"].endswith("Z")
    assert "*/10" in flowd("list", "--type", "cron").out


def test_db_upgrade__is_idempotent(flowd: Run) -> None:
    assert flowd("db", "upgrade").code == 0
    r = flowd("db", "upgrade")
    assert r.code == 0 and "schema up to date" in r.out


def test_unreachable_database__exit_1_and_password_masked(flowd: Run) -> None:
    r = flowd("list", "--db", "postgresql+psycopg://alice:s3cr3tpw@127.0.0.1:1/nodb")
    assert r.code == 1 and "unreachable" in r.err and "s3cr3tpw" not in r.err + r.out


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://alice@127.0.0.1:1/nodb?password=s3cr3tpw",
        "postgresql+psycopg://alice:s3cr3tpw@127.0.0.1:1/nodb?sslmode=disable&sslpassword=s3cr3tpw",
        "mysql+pymysql://alice@127.0.0.1:1/nodb?charset=utf8mb4&password=s3cr3tpw",
    ],
)
def test_unreachable_database__query_parameter_password_masked_everywhere(flowd: Run, url: str) -> None:
    r = flowd("list", "--db", url)
    assert r.code == 1 and "unreachable" in r.err and "s3cr3tpw" not in r.err + r.out
    assert "=***" in r.err
    doc = flowd("doctor", "--json", "--db", url)
    assert doc.code == 1 and "s3cr3tpw" not in doc.out + doc.err and "=***" in doc.out


def test_unparseable_database_url__is_refused_with_its_password_masked(flowd: Run) -> None:
    r = flowd("list", "--db", "nonsense:/x?password=s3cr3tpw")
    assert r.code == 2 and "bad database URL" in r.err and "s3cr3tpw" not in r.err


def test_worker__missing_handlers_directory_is_refused(flowd: Run, tmp_path: Path) -> None:
    r = flowd("worker", "--handlers", str(tmp_path / "nowhere"))
    assert r.code == 2 and "does not exist" in r.err


def test_version(flowd: Run) -> None:
    assert flowd("--version").out.startswith("flowd ")


def test_json_output__stays_one_document_when_the_command_logs(flowd: Run) -> None:
    flowd("submit", "echo", "{}")
    flowd("cancel", "1")
    r = flowd("retention", "--expire-time", "0", "--json")
    assert r.json() == {"tasks_deleted": 1, "events_deleted": 2, "attempts_deleted": 0}
    assert flowd("retention", "--status", "running").code == 2


def test_db_current__reports_revision_without_creating_anything(flowd: Run, tmp_path: Path) -> None:
    doc = flowd("db", "current", "--json").json()
    assert doc["current"] is None and doc["up_to_date"] is False and doc["head"]
    flowd("db", "upgrade")
    doc = flowd("db", "current", "--json").json()
    assert doc["current"] == doc["head"] and doc["up_to_date"] is True
    assert "up to date" in flowd("db", "current").out
