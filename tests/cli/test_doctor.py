"""`flowd doctor`: a pass/fail list on good and broken set-ups; exit 1 when anything fails."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowd.clock import utcnow
from flowd.manager import doctor
from tests.cli.conftest import Result

Run = Callable[..., Result]


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def check(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["name"] == name)


def test_doctor__good_setup_passes_and_exits_0(flowd: Run) -> None:
    assert flowd("db", "upgrade").code == 0
    r = flowd("doctor")
    assert r.code == 0, r.out
    lines = r.out.splitlines()
    assert [x.split()[:2] for x in lines[:5]] == [
        ["PASS", "settings"],
        ["PASS", "database"],
        ["PASS", "schema"],
        ["PASS", "handlers"],
        ["SKIP", "clock"],  # SQLite runs on this host's clock
    ]
    assert "echo" in lines[3] and lines[-1] == "all checks passed"
    doc = flowd("doctor", "--json").json()
    assert doc["ok"] is True and statuses(doc)["schema"] == "pass"


def test_doctor__broken_handler_file_is_listed_with_file_and_line(flowd: Run, tmp_path: Path) -> None:
    flowd("db", "upgrade")
    (tmp_path / "handlers" / "broken.py").write_text("import os\n\nraise RuntimeError('half-written plugin')\n")
    r = flowd("doctor")
    assert r.code == 1
    assert "FAIL handlers 1 file(s)" in r.out
    assert "broken.py:3: RuntimeError: half-written plugin" in r.out
    doc = flowd("doctor", "--json").json()
    assert statuses(doc) == {
        "settings": "pass",
        "database": "pass",
        "schema": "pass",
        "handlers": "fail",
        "clock": "skip",
        "pooler": "skip",  # PostgreSQL only
        "capacity": "skip",
    }
    [err] = check(doc, "handlers")["errors"]
    assert err.endswith("broken.py:3: RuntimeError: half-written plugin")


def test_doctor__unreachable_database_fails_and_skips_what_needs_it(flowd: Run) -> None:
    r = flowd("doctor", "--json", "--db", "postgresql+psycopg://flowd:secret@127.0.0.1:1/flowd")
    assert r.code == 1
    doc = r.json()
    assert statuses(doc) == {
        "settings": "pass",
        "database": "fail",
        "schema": "skip",
        "handlers": "pass",
        "clock": "skip",
        "pooler": "skip",
        "capacity": "skip",
    }
    detail = str(check(doc, "database")["detail"])
    assert "unreachable" in detail and "secret" not in detail and "***" in detail


def test_doctor__missing_sqlite_file_is_reported_not_created(flowd: Run, tmp_path: Path) -> None:
    r = flowd("doctor")
    assert r.code == 1
    assert "FAIL database no SQLite file at" in r.out and "run `flowd db upgrade`" in r.out
    assert not (tmp_path / "flowd.db").exists()


def test_doctor__old_or_foreign_schema_fails_with_the_fix(flowd: Run, tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "flowd.db").close()  # a database file without the flowd schema
    r = flowd("doctor")
    assert r.code == 1 and "FAIL schema   no flowd schema (this flowd expects" in r.out
    flowd("db", "upgrade")
    with sqlite3.connect(tmp_path / "flowd.db") as c:
        c.execute("UPDATE flowd_alembic_version SET version_num = '9999'")
    r = flowd("doctor")
    assert r.code == 1 and "at revision 9999, unknown to this flowd" in r.out


def test_doctor__bad_settings_fail_first_and_skip_the_rest(flowd: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWD_MAX_RETRIES", "0")
    r = flowd("doctor")
    assert r.code == 1
    assert r.out.splitlines()[0].startswith("FAIL settings bad setting max_retries")
    assert [x.split()[0] for x in r.out.splitlines()[1:5]] == ["SKIP"] * 4


def test_doctor__clock_skew_against_the_database_server(empty_db_url: str, tmp_path: Path) -> None:
    """On PostgreSQL and MySQL the server's clock is compared with this host's."""
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    if empty_db_url.startswith("sqlite:///"):
        sqlite3.connect(empty_db_url.removeprefix("sqlite:///")).close()  # an empty file, as a server starts empty
    in_sync = doctor(db_url=empty_db_url, handlers_dir=str(handlers))
    assert statuses(in_sync)["schema"] == "fail"  # a fresh database: no schema yet
    clock = check(in_sync, "clock")
    if empty_db_url.startswith("sqlite"):
        assert clock["status"] == "skip"
        return
    assert clock["status"] == "pass", clock
    skewed = doctor(db_url=empty_db_url, handlers_dir=str(handlers), clock=lambda: utcnow() + timedelta(seconds=30))
    clock = check(skewed, "clock")
    assert clock["status"] == "fail" and "behind this host" in str(clock["detail"]), clock
