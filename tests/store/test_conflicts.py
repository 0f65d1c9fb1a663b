"""A deadlock rolls a transaction back; `Database.transaction` runs it again (PostgreSQL, MySQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from flowd.model import NewTask
from flowd.store import tasks as task_store
from flowd.store.db import Database
from flowd.store.schema import tasks as T

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def server_url(db_url: str) -> Iterator[str]:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite takes the whole file's write lock up front: no deadlock between rows")
    yield db_url


def tag(conn: sa.Connection, ids: list[int], value: str) -> None:
    conn.execute(sa.update(T).where(T.c.id.in_(ids)).values(tag=value))


def test_transaction__reruns_work_that_lost_a_deadlock(server_url: str) -> None:
    db, rival_db = Database(server_url), Database(server_url)  # two engines: two real sessions
    with db.write() as conn:
        a, b, *fillers = task_store.insert_tasks(conn, [NewTask("n", {}) for _ in range(40)], T0)
    a_locked, b_locked = threading.Event(), threading.Event()
    calls = 0
    rival_error: list[BaseException] = []

    def work(conn: sa.Connection) -> int:
        nonlocal calls
        calls += 1
        tag(conn, [a], "work")
        if calls == 1:
            a_locked.set()
            assert b_locked.wait(10)
        tag(conn, [b], "work")  # the first time: waits for the rival, who waits for us
        return calls

    def rival() -> None:
        try:
            with rival_db.write() as conn:
                if rival_db.dialect == "postgresql":
                    # the work's own deadlock check then fires first: it is the one rolled back
                    conn.exec_driver_sql("SET LOCAL deadlock_timeout = '10s'")
                else:
                    tag(conn, fillers, "rival")  # InnoDB rolls back the lighter transaction: the work's
                tag(conn, [b], "rival")
                b_locked.set()
                assert a_locked.wait(10)
                tag(conn, [a], "rival")
        except BaseException as e:  # reported below
            rival_error.append(e)

    t = threading.Thread(target=rival)
    t.start()
    try:
        assert db.transaction(work) == 2
    finally:
        t.join(30)
    assert not rival_error, rival_error
    with db.read() as conn:
        got = {x.id: x.tag for x in task_store.get_many(conn, [a, b])}
    assert got == {a: "work", b: "work"}  # the rerun committed after the rival
    db.dispose()
    rival_db.dispose()
