"""A database at another schema revision: only `flowd db upgrade` and a starting worker migrate.

An empty database is still created on first use by any command (SQLite's zero set-up).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from flowd.manager import TaskManager
from flowd.store import migrate
from flowd.store.schema import SCHEMA_REVISION
from tests.cli.conftest import Result

Run = Callable[..., Result]
OLD = "0007"
READERS = (
    ("list",),
    ("show", "1"),
    ("stats",),
    ("workers",),
    ("audit", "task", "1"),
    ("audit", "summary", "1"),
    ("submit", "echo", "{}"),
)


def revision_and_tables(url: str) -> tuple[str | None, set[str]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return migrate.current(conn), set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def migrate_to(url: str, revision: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate.config(conn), revision)
    finally:
        engine.dispose()


def test_empty_database__created_on_first_use_by_any_command(empty_db_url: str, flowd: Run) -> None:
    r = flowd("list", "--db", empty_db_url, "--json")
    assert r.code == 0 and r.json()["total"] == 0
    assert revision_and_tables(empty_db_url)[0] == SCHEMA_REVISION


def test_older_revision__commands_refuse_it_unchanged_until_db_upgrade(empty_db_url: str, flowd: Run) -> None:
    migrate_to(empty_db_url, OLD)
    before = revision_and_tables(empty_db_url)
    assert before[0] == OLD and "flowd_entities" not in before[1]
    for args in READERS:
        r = flowd(*args, "--db", empty_db_url)
        assert r.code == 2, (args, r)
        assert r.out == "" and len(r.err.strip().splitlines()) == 1, (args, r.err)
        assert f"schema revision {OLD}, this flowd needs {SCHEMA_REVISION}" in r.err
        assert "run `flowd db upgrade`" in r.err
    assert revision_and_tables(empty_db_url) == before, "nothing was migrated, nothing written"
    r = flowd("db", "upgrade", "--db", empty_db_url)
    assert r.code == 0 and "schema up to date" in r.out
    assert revision_and_tables(empty_db_url)[0] == SCHEMA_REVISION
    assert flowd("submit", "echo", "{}", "--db", empty_db_url).code == 0
    assert flowd("list", "--db", empty_db_url, "--json").json()["total"] == 1


def test_older_revision__a_starting_worker_migrates_it(empty_db_url: str, tmp_path: Path) -> None:
    migrate_to(empty_db_url, OLD)
    m = TaskManager(db_url=empty_db_url, handlers_dir=str(tmp_path), pod_id="a")
    try:
        m.use("job", lambda t: "done")
        w = m.make_worker()
        w.start()  # under the schema lock; logged as schema_migrated
        assert revision_and_tables(empty_db_url)[0] == SCHEMA_REVISION
        tid = m.submit("job", {})
        w.run_until_idle()
        assert m.get_task(tid).result == "done"
        w.close()
    finally:
        m.close()


@pytest.mark.parametrize(
    "args",
    [*READERS, ("db", "upgrade"), ("worker", "--no-reload", "--pod-id", "a")],
    ids=lambda a: " ".join(a),
)
def test_newer_revision__every_command_names_both_revisions(db_url: str, flowd: Run, args: tuple[str, ...]) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flowd_alembic_version SET version_num = '0999'"))
    engine.dispose()
    r = flowd(*args, "--db", db_url)
    assert r.code == 2, r
    assert r.out == "" and len(r.err.strip().splitlines()) == 1, r.err
    assert f"schema revision 0999, newer than this flowd knows (its newest is {SCHEMA_REVISION})" in r.err
    assert "Can't locate" not in r.err
    assert revision_and_tables(db_url)[0] == "0999"
