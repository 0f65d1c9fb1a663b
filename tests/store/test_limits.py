"""Bounded waits on the servers: a stuck statement is cancelled, it does not hang its worker."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from flowd.errors import DatabaseUnavailable
from flowd.store.db import Database


def test_statement_timeout__a_stuck_statement_is_cancelled(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite runs in-process: its waits are bounded by busy_timeout")
    db = Database(db_url, statement_timeout=0.5)
    sleep = "SELECT pg_sleep(30)" if db.dialect == "postgresql" else "SELECT SLEEP(30)"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"timed out|timeout|interrupted"), db.read() as conn:
        conn.exec_driver_sql(sleep)
    assert time.monotonic() - started < 10
    with db.read() as conn:  # the connection pool is still usable afterwards
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    db.dispose()
