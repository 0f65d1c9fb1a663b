"""Claims and stored values on every backend: order, caps, disjoint concurrent claims, round trips."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flowd.model import NewTask, TaskId, TaskStatus, TaskType
from flowd.store import tasks as task_store
from flowd.store.db import Database

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = pytest.mark.pooled

T0 = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    d = Database(db_url)
    yield d
    d.dispose()


def insert(db: Database, *news: NewTask, now: datetime = T0) -> list[TaskId]:
    with db.write() as conn:
        return task_store.insert_tasks(conn, list(news), now)


def claim(db: Database, worker: str, limits: dict[str, int], slots: int, now: datetime) -> list[TaskId]:
    with db.write() as conn:
        return [t.id for t in task_store.claim_due(conn, worker, limits, slots, now)]


def test_claim__takes_up_to_slots_by_priority_then_due_time_then_id(db: Database) -> None:
    late, low, high_b, high_a, future = insert(
        db,
        NewTask("n", {}, next_run_time=T0 + timedelta(milliseconds=5)),
        NewTask("n", {}),
        NewTask("n", {}, priority=5, next_run_time=T0 + timedelta(milliseconds=1)),
        NewTask("n", {}, priority=5),
        NewTask("n", {}, priority=9, next_run_time=T0 + timedelta(hours=1)),
    )
    now = T0 + timedelta(seconds=1)
    assert claim(db, "w1", {"n": 10}, 3, now) == [high_a, high_b, low]
    assert claim(db, "w2", {"n": 10}, 3, now) == [late]  # `future` is not due
    with db.read() as conn:
        rows = {t.id: t for t in task_store.get_many(conn, [late, low, high_a, future])}
    assert rows[high_a].worker_id == "w1" and rows[high_a].attempt == 1 and rows[high_a].started_at == now
    assert rows[late].worker_id == "w2" and rows[late].status is TaskStatus.RUNNING
    assert rows[future].status is TaskStatus.PENDING and rows[future].attempt == 0


def test_claim__per_name_limits_cap_each_name_in_one_batch(db: Database) -> None:
    insert(db, *[NewTask("a", {}, priority=1) for _ in range(4)], *[NewTask("b", {}) for _ in range(4)])
    now = T0 + timedelta(seconds=1)
    got = claim(db, "w", {"a": 1, "b": 2, "absent": 0}, 10, now)
    with db.read() as conn:
        names = sorted(task_store.names_of(conn, got).values())
    assert names == ["a", "b", "b"]
    assert claim(db, "w", {"a": 0, "b": 0}, 10, now) == []


def test_claim__concurrent_claimers_with_own_engines_never_share_a_task(db_url: str, db: Database) -> None:
    """Four claimers, each with its own engine and connections, race over one table.

    Invariant: every task is claimed exactly once, by the claimer that recorded it, with attempt 1.
    """
    n_tasks, n_claimers = 60, 4
    ids = insert(db, *[NewTask("job", {"i": i}) for i in range(n_tasks)])
    now = T0 + timedelta(seconds=1)
    got: dict[str, list[TaskId]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_claimers)

    def claimer(worker: str) -> None:
        own = Database(db_url)
        mine: list[TaskId] = []
        try:
            start.wait(10)
            idle = 0
            while idle < 3:  # an empty batch may only mean the rest are locked by others
                batch = claim(own, worker, {"job": 3}, 3, now)
                mine += batch
                idle = 0 if batch else idle + 1
        except BaseException as e:  # reported below: a thread's exception must fail the test
            errors.append(e)
        finally:
            got[worker] = mine
            own.dispose()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(n_claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    claimed = [tid for batch in got.values() for tid in batch]
    assert len(claimed) == len(set(claimed)), "a task was claimed twice"
    assert sorted(claimed) == sorted(ids)
    with db.read() as conn:
        rows = {t.id: t for t in task_store.get_many(conn, ids)}
    for worker, mine in got.items():
        for tid in mine:
            assert rows[tid].worker_id == worker and rows[tid].attempt == 1 and rows[tid].status is TaskStatus.RUNNING


def test_values__round_trip_exactly(db: Database) -> None:
    """JSON as given (falsy, unicode, > 64 KiB), bytes > 64 KiB, unicode text, milliseconds."""
    big = "x" * 70_000  # over MySQL's TEXT/BLOB limit: the columns must be LONGTEXT/LONGBLOB
    payload = {"u": "zoë ✓ 🚀", "nested": [0, False, None, "", {"k": []}], "big": big}
    when = T0 + timedelta(milliseconds=7)
    (tid,) = insert(db, NewTask("n", payload, tag="étiquette", labels={"env": "prød"}, next_run_time=when))
    with db.write() as conn:
        task_store.update_fields(conn, tid, {"context": b"\x00\xff" * 40_000, "error": "échec 🚀 " + big}, T0)
    with db.read() as conn:
        t = task_store.get(conn, tid)
    assert t is not None
    assert t.payload == payload
    assert t.tag == "étiquette" and t.labels == {"env": "prød"}
    assert t.context == b"\x00\xff" * 40_000
    assert t.error == "échec 🚀 " + big
    assert t.next_run_time == when and t.created_at == T0  # milliseconds kept, UTC-aware


def test_key_and_name__are_case_and_accent_sensitive(db: Database) -> None:
    """MySQL's default collations compare 'Key' = 'key' = 'kéy': flowd's must not."""
    a, b, c = insert(db, NewTask("Echo", {}, key="Key"), NewTask("echo", {}, key="key"), NewTask("echo", {}, key="kéy"))
    with db.read() as conn:
        found = [task_store.find_active_by_key(conn, k, TaskType.ASYNC) for k in ("Key", "key", "kéy", "KEY")]
        names = task_store.query(conn, task_store.TaskFilter(name="echo"), 10, 0).items
    assert [f.id if f else None for f in found] == [a, b, c, None]
    assert sorted(t.id for t in names) == [b, c]
