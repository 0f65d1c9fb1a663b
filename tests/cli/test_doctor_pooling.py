"""`flowd doctor` on PostgreSQL: the pooler check (direct, PgBouncer, a LISTEN URL) and the capacity check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.manager import doctor
from tests.conftest import fresh_database, server_url


def check(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["name"] == name)


@pytest.fixture
def direct_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("postgres", tmp_path, migrated=True)


@pytest.fixture
def pooled_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("pgbouncer", tmp_path, migrated=True)


def test_doctor__direct_server_passes_and_shows_the_connection_budget(direct_url: str, tmp_path: Path) -> None:
    doc = doctor(db_url=direct_url, handlers_dir=str(tmp_path))
    pooler, capacity = check(doc, "pooler"), check(doc, "capacity")
    assert pooler["status"] == "pass" and "direct connection" in pooler["detail"], pooler
    assert "statement_timeout 60s in force" in pooler["detail"]
    assert capacity["status"] in ("pass", "warn") and " of 100 in use" in capacity["detail"], capacity
    assert "db_pool_size + 1 = 2" in capacity["detail"]


def test_doctor__through_pgbouncer_warns_that_workers_will_poll_until_a_direct_listen_url_is_set(
    pooled_url: str, tmp_path: Path
) -> None:
    doc = doctor(db_url=pooled_url, handlers_dir=str(tmp_path))
    pooler = check(doc, "pooler")
    assert pooler["status"] == "warn" and doc["ok"] is True, pooler
    assert "a pooler answers" in pooler["detail"] and "SET LOCAL" in pooler["detail"]
    assert "no prepared statements" in pooler["detail"] and "poll" in pooler["detail"]
    assert "behind the pooler" in check(doc, "capacity")["detail"]

    database = sa.make_url(pooled_url).database
    direct = sa.make_url(server_url("postgres") or "").set(database=database)
    doc = doctor(db_url=pooled_url, handlers_dir=str(tmp_path), db_listen_url=direct.render_as_string(False))
    assert check(doc, "pooler")["status"] == "pass"
    assert "LISTEN on db_listen_url" in check(doc, "pooler")["detail"]

    # a pooler where the settings say there is none, and a LISTEN URL that does not answer
    doc = doctor(db_url=pooled_url, handlers_dir=str(tmp_path), db_pooled="false")
    assert check(doc, "pooler")["status"] == "fail" and doc["ok"] is False
    bad = direct.set(port=1, password="s3cret").render_as_string(False)
    doc = doctor(db_url=pooled_url, handlers_dir=str(tmp_path), db_listen_url=bad)
    detail = check(doc, "pooler")["detail"]
    assert check(doc, "pooler")["status"] == "fail" and "unreachable" in detail and "s3cret" not in detail


def test_doctor__pooled_true_on_a_direct_url_warns_that_workers_will_poll(direct_url: str, tmp_path: Path) -> None:
    doc = doctor(db_url=direct_url, handlers_dir=str(tmp_path), db_pooled="true")
    assert check(doc, "pooler")["status"] == "warn" and "poll" in check(doc, "pooler")["detail"]
