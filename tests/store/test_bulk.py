"""`bulk.insert` / `bulk.update`: the columns' own bind processing, many rows per round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from flowd.model import NewTask
from flowd.store import bulk
from flowd.store import tasks as task_store
from flowd.store.db import Database
from flowd.store.schema import events as E
from flowd.store.schema import tasks as T

T0 = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)


def test_insert__stores_values_as_sqlalchemy_would(db_url: str) -> None:
    db = Database(db_url)
    rows = [
        {
            "task_id": i,
            "root_id": i,
            "parent_id": None,
            "event_type": "task_checkpoint",
            "worker_id": "w",
            "attempt": 1,
            "stage": 0,
            "from_status": None,
            "to_status": None,
            "message": "m",
            "metadata": {"code": "x", "n": i, "falsy": [0, "", False]},
            "created_at": T0 + timedelta(milliseconds=i),
        }
        for i in (1, 2, 3)
    ]
    with db.write() as conn:
        bulk.insert(conn, E, rows)
    with db.read() as conn:
        got = conn.execute(sa.select(E.c.task_id, E.c.metadata, E.c.created_at).order_by(E.c.id)).all()
        raw = conn.execute(sa.text("SELECT created_at FROM flowd_task_events ORDER BY id")).scalars().all()
    assert [tuple(r) for r in got] == [(r["task_id"], r["metadata"], r["created_at"]) for r in rows]
    # the Millis type's own storage: integer milliseconds
    assert [int(v) for v in raw] == [int((T0 + timedelta(milliseconds=i)).timestamp() * 1000) for i in (1, 2, 3)]


def test_update__counts_only_rows_that_still_match_and_keeps_the_statement_constants(db_url: str) -> None:
    db = Database(db_url)
    with db.write() as conn:
        ids = task_store.insert_tasks(conn, [NewTask("n", {}) for _ in range(3)], T0)
        conn.execute(sa.update(T).where(T.c.id == ids[1]).values(status="running"))
        rows = [{"f_id": i, "tag": f"t{i}"} for i in ids]
        count = bulk.update(conn, T, rows, match={"f_id": "id"}, equal={"status": "pending"})
    assert count == 2  # the running one no longer matches `status = 'pending'`
    with db.read() as conn:
        tags = dict(conn.execute(sa.select(T.c.id, T.c.tag)).all())
    assert tags == {ids[0]: f"t{ids[0]}", ids[1]: None, ids[2]: f"t{ids[2]}"}


def test_claim__decodes_its_rows_as_a_plain_read_does(db_url: str) -> None:
    import dataclasses

    from flowd.model import TaskRecord

    # the claim builds records by position: the fields must be the columns, in order
    assert [f.name for f in dataclasses.fields(TaskRecord)] == [c.name for c in T.columns]
    db = Database(db_url)
    with db.write() as conn:
        (root,) = task_store.insert_tasks(conn, [NewTask("n", {"falsy": 0})], T0)
        (child,) = task_store.insert_tasks(
            conn,
            [
                NewTask(
                    "n",
                    {"a": [1, {"b": None}], "s": "é"},
                    priority=7,
                    tag="t",
                    labels={"tenant": "acme"},
                    key="k1",
                    max_retries=5,
                    retry_interval=1.5,
                    timeout=2.25,
                    parent_id=root,
                    root_id=root,
                    parent_stage=0,
                )
            ],
            T0,
        )
        conn.execute(sa.update(T).where(T.c.id == child).values(context=b"\x00ctx", result=[]))
    with db.write() as conn:
        claimed = task_store.claim_due(conn, "w1", {"n": 10}, 10, T0 + timedelta(seconds=1))
    assert {t.id for t in claimed} == {root, child}
    with db.read() as conn:
        for t in claimed:
            assert t == task_store.get(conn, t.id)


def test_insert__many_rows_keep_every_value_whatever_the_path(db_url: str) -> None:
    """Enough rows for PostgreSQL's COPY path: awkward text, NULLs, bytes and floats survive."""
    db = Database(db_url)
    n = bulk.COPY_MIN_ROWS + 5
    news = [NewTask("n", {"i": i, "s": "tab\there\nnew \\ line é \x01"}, retry_interval=0.25 * i) for i in range(n)]
    with db.write() as conn:
        ids = task_store.insert_tasks(conn, news, T0)
        conn.execute(sa.update(T).where(T.c.id == ids[0]).values(context=b"\x00\\x\t"))
    with db.read() as conn:
        got = task_store.get_many(conn, ids)
        events = conn.execute(sa.select(E.c.task_id, E.c.event_type).order_by(E.c.id)).all()
    assert [t.payload for t in got] == [new.payload for new in news]
    assert [t.retry_interval for t in got] == [0.25 * i for i in range(n)]
    assert [t.root_id for t in got] == ids and all(t.parent_id is None for t in got)
    assert got[0].context == b"\x00\\x\t"
    assert [tuple(e) for e in events] == [(tid, "task_created") for tid in ids]


def test_insert_copies__interleaved_templates_keep_item_order_and_their_own_columns(db_url: str) -> None:
    """Tasks made from two templates, alternating: ids in item order, each row its template's."""
    db = Database(db_url)
    with db.write() as conn:
        (parent,) = task_store.insert_tasks(conn, [NewTask("p", {})], T0)
    a = NewTask("a", {"ignored": 1}, priority=3, tag="ta", labels={"k": "v"}, timeout=5.0)
    b = NewTask("b", {}, parent_id=parent, root_id=parent, parent_stage=0, next_run_time=T0 + timedelta(hours=1))
    n = bulk.COPY_MIN_ROWS + 3
    copies = [(a if i % 2 else b, f'{{"i":{i}}}', ()) for i in range(n)]
    with db.write() as conn:
        ids = task_store.insert_copies(conn, copies, T0)
    assert ids == sorted(ids) and len(set(ids)) == n
    with db.read() as conn:
        got = task_store.get_many(conn, ids)
        events = conn.execute(
            sa.select(E.c.task_id, E.c.root_id, E.c.parent_id, E.c.metadata)
            .where(E.c.task_id.in_(ids))
            .order_by(E.c.id)
        ).all()
    by_id = {t.id: t for t in got}
    for i, tid in enumerate(ids):
        t = by_id[tid]
        assert t.payload == {"i": i}
        if i % 2:
            assert (t.name, t.priority, t.tag, t.labels, t.timeout, t.root_id, t.parent_id) == (
                "a",
                3,
                "ta",
                {"k": "v"},
                5.0,
                tid,
                None,
            )
            assert t.next_run_time == T0
        else:
            assert (t.name, t.root_id, t.parent_id, t.parent_stage) == ("b", parent, parent, 0)
            assert t.next_run_time == T0 + timedelta(hours=1)
    assert [(e.task_id, e.root_id, e.parent_id) for e in events] == [
        (tid, tid if i % 2 else parent, None if i % 2 else parent) for i, tid in enumerate(ids)
    ]
    assert events[0].metadata == {"type": "async", "priority": 0, "parent_stage": 0}


def test_update__many_rows_one_statement_counts_and_converts_like_executemany(db_url: str) -> None:
    """Enough rows for PostgreSQL's one-statement path: the count, NULLs, JSON, ints in a float column."""
    db = Database(db_url)
    n = bulk.COPY_MIN_ROWS + 5
    with db.write() as conn:
        ids = task_store.insert_tasks(conn, [NewTask("n", {}) for _ in range(n)], T0)
        conn.execute(sa.update(T).where(T.c.id == ids[3]).values(status="running"))
        rows = [
            {
                "f_id": tid,
                "result": {"i": i, "s": "é\\t"} if i % 2 else None,
                "progress_percent": i if i % 3 else 0.5,  # ints and floats in one float column
                "error": None if i % 2 else f"e{i}",
                "updated_at": T0 + timedelta(seconds=i),
            }
            for i, tid in enumerate(ids)
        ]
        count = bulk.update(conn, T, rows, match={"f_id": "id"}, equal={"status": "pending"})
    assert count == n - 1  # the running one no longer matches `status = 'pending'`
    with db.read() as conn:
        got = {t.id: t for t in task_store.get_many(conn, ids)}
    for i, tid in enumerate(ids):
        t = got[tid]
        if i == 3:
            assert (t.result, t.error, t.progress_percent, t.updated_at) == (None, None, None, T0)
            continue
        assert t.result == ({"i": i, "s": "é\\t"} if i % 2 else None)
        assert t.progress_percent == (float(i) if i % 3 else 0.5)
        assert t.error == (None if i % 2 else f"e{i}")
        assert t.updated_at == T0 + timedelta(seconds=i)
