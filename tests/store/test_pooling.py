"""PostgreSQL behind a transaction-mode pooler (the session's own PgBouncer) and the connection budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from flowd.manager import TaskManager
from flowd.store.db import Database, behind_pooler
from tests.conftest import fresh_database, server_url


def _conninfo(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def direct_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("postgres", tmp_path, migrated=True)


@pytest.fixture
def pooled_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("pgbouncer", tmp_path, migrated=True)


def _backends(url: str) -> int:
    """Server backends connected to the database `url` names (counted over a direct connection)."""
    name = sa.make_url(url).database
    with psycopg.connect(_conninfo(server_url("postgres") or ""), autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def test_behind_pooler__false_direct_true_through_pgbouncer(direct_url: str, pooled_url: str) -> None:
    with psycopg.connect(_conninfo(direct_url)) as c:
        assert behind_pooler(c) is False
    with psycopg.connect(_conninfo(pooled_url)) as c:
        assert behind_pooler(c) is True


@pytest.mark.parametrize("which", ["direct", "pooled"])
def test_statement_timeout__in_force_in_every_transaction_and_never_left_on_a_pooled_server(
    which: str, direct_url: str, pooled_url: str
) -> None:
    url = direct_url if which == "direct" else pooled_url
    db = Database(url, statement_timeout=7.5)
    try:
        for _ in range(3):
            with db.read() as conn:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "7500ms"
        assert db.pooled is (which == "pooled")
        # the pooler's server connections carry no session state of ours: any client of the
        # pooler sees the server's default
        with psycopg.connect(_conninfo(pooled_url), autocommit=True) as c:
            for _ in range(5):
                assert c.execute("SHOW statement_timeout").fetchone() == ("0",)
    finally:
        db.dispose()


def test_pooled__statements_repeated_across_server_connections_never_meet_a_missing_prepared_statement(
    pooled_url: str,
) -> None:
    # psycopg prepares a statement run 5 times on one connection; through a transaction pooler
    # the next transaction may run on another server connection, where it "does not exist"
    dbs = [Database(pooled_url) for _ in range(6)]
    errors: list[BaseException] = []

    def work(db: Database) -> None:
        try:
            for i in range(40):
                with db.read() as conn:
                    conn.execute(sa.text("SELECT count(*) FROM flowd_tasks WHERE id > :i"), {"i": i}).scalar_one()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for db in dbs:
        db.dispose()
    assert not errors, errors[:2]


@pytest.mark.parametrize("pool_size", [1, 2])
def test_pool_budget__many_threads_never_open_more_than_db_pool_size_connections(
    pool_size: int, direct_url: str
) -> None:
    db = Database(direct_url, pool_size=pool_size)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                with db.read() as conn:
                    conn.exec_driver_sql("SELECT pg_sleep(0.005)")
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:2]
        # the pool keeps what it opened: every connection it ever held is still there
        assert _backends(direct_url) == pool_size
    finally:
        db.dispose()


def test_cli_manager__uses_one_connection(direct_url: str, tmp_path: Path) -> None:
    m = TaskManager(db_url=direct_url, handlers_dir=str(tmp_path), db_pool_size=4)
    m.use("echo", lambda t: None)
    try:
        m.submit("echo", {})
        m.query_tasks(limit=5)
        m.workers()
        assert _backends(direct_url) == 1
    finally:
        m.close()


def test_notify__payload_counts_the_tasks_that_became_due(direct_url: str, tmp_path: Path) -> None:
    m = TaskManager(db_url=direct_url, handlers_dir=str(tmp_path))
    m.use("echo", lambda t: None)
    try:
        with psycopg.connect(_conninfo(direct_url), autocommit=True) as listener:
            listener.execute("LISTEN flowd_tasks")
            m.submit_many([("echo", {})] * 5)
            m.submit("echo", {})
            got: list[str] = []
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                got += [n.payload for n in listener.notifies(timeout=1, stop_after=2 - len(got))]
        assert got == ["5", "1"]
    finally:
        m.close()


def test_listen__through_the_pooler_gives_up_with_no_thread_left_and_a_direct_listen_url_wakes(
    pooled_url: str, direct_url: str
) -> None:
    # auto: the listener asks its connection, finds the pooler and ends (the worker polls)
    db = Database(pooled_url)
    listener = db.listen(lambda: None)
    listener._thread.join(15)
    assert not listener._thread.is_alive() and not listener.connected.is_set()
    db.dispose()
    # a pooler named by the setting: no thread at all
    assert Database(pooled_url, pooled="true").listen(lambda: None) is None
    # a direct URL for LISTEN (the same database): a submit through the pooler wakes it
    woken = threading.Event()
    direct_same_db = sa.make_url(direct_url).set(database=sa.make_url(pooled_url).database)
    db = Database(pooled_url, listen_url=direct_same_db.render_as_string(hide_password=False))
    listener = db.listen(woken.set)
    try:
        assert listener.connected.wait(15)
        woken.clear()
        m = TaskManager(db_url=pooled_url, handlers_dir="nowhere")
        m.use("echo", lambda t: None)
        try:
            m.submit("echo", {})
        finally:
            m.close()
        assert woken.wait(10)
    finally:
        listener.stop()
        db.dispose()
