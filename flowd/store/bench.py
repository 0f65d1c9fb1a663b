"""SQL for `flowd bench`: scratch databases, bulk history, and the figures read back from rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from flowd.model import TaskStatus
from flowd.store.schema import attempts as A
from flowd.store.schema import events as E
from flowd.store.schema import tasks as T

HISTORY_CHUNK = 5000


def create_scratch_database(server_url: str) -> str:
    """Create an empty database on the server of `server_url`; returns its URL."""
    base = sa.make_url(server_url)
    name = "flowd_bench_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database `url` names (a scratch database of `create_scratch_database`)."""
    u = sa.make_url(url)
    name = u.database
    assert name and name.startswith("flowd_bench_"), "only scratch databases are dropped"
    # connect to the server's default database: one cannot drop the database one is in
    admin_db = "postgres" if u.get_backend_name() == "postgresql" else None
    admin = sa.create_engine(u.set(database=admin_db), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            force = " WITH (FORCE)" if u.get_backend_name() == "postgresql" else ""
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
    finally:
        admin.dispose()


def insert_history(
    conn: sa.Connection,
    n: int,
    name: str,
    payload: dict[str, Any],
    now: datetime,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Insert `n` completed tasks as a worker would have left them: three events, one closed attempt.

    Explicit ids 1..n in an empty table keep this to three executemany calls per chunk
    (no id read-back); PostgreSQL's sequence is moved past them afterwards.
    """
    start = now - timedelta(hours=1)
    for lo in range(1, n + 1, HISTORY_CHUNK):
        ids = range(lo, min(n, lo + HISTORY_CHUNK - 1) + 1)
        conn.execute(
            sa.insert(T),
            [
                {
                    "id": i,
                    "name": name,
                    "type": "async",
                    "status": TaskStatus.COMPLETED.value,
                    "payload": payload,
                    "result": None,
                    "priority": 0,
                    "stage": 0,
                    "root_id": i,
                    "retry_count": 0,
                    "max_retries": 3,
                    "retry_interval": 0.0,
                    "timeout": 60.0,
                    "next_run_time": start,
                    "worker_id": "bench-history",
                    "attempt": 1,
                    "started_at": start,
                    "heartbeat_at": start,
                    "last_event_type": "task_completed",
                    "last_event_time": start,
                    "created_at": start,
                    "updated_at": start,
                }
                for i in ids
            ],
        )
        steps = (
            ("task_created", None, "pending"),
            ("task_started", "pending", "running"),
            ("task_completed", "running", "completed"),
        )
        conn.execute(
            sa.insert(E),
            [
                {
                    "task_id": i,
                    "root_id": i,
                    "parent_id": None,
                    "event_type": ev,
                    "worker_id": "bench-history",
                    "attempt": 1,
                    "stage": 0,
                    "from_status": fr,
                    "to_status": to,
                    "message": None,
                    "metadata": None,
                    "created_at": start,
                }
                for i in ids
                for ev, fr, to in steps
            ],
        )
        conn.execute(
            sa.insert(A),
            [
                {
                    "task_id": i,
                    "attempt": 1,
                    "stage": 0,
                    "worker_id": "bench-history",
                    "started_at": start,
                    "ended_at": start,
                    "outcome": "completed",
                }
                for i in ids
            ],
        )
        if on_chunk is not None:
            on_chunk(ids[-1])
    if n and conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{T.name}', 'id'), {n})"))


def settle(engine: sa.Engine) -> None:
    """Bring a freshly loaded database to the state a running one is in: statistics current,
    dead rows vacuumed (PostgreSQL), the write-ahead log checkpointed. Loading a million
    rows of history leaves autovacuum, ANALYZE and a checkpoint to run later: without this
    they would run during the measurement and be counted as the cost of history.

    SQLite: nothing to do (no statistics unless someone runs ANALYZE, which flowd does not;
    the WAL is checkpointed as it grows)."""
    if engine.dialect.name == "sqlite":
        return
    tables = [t.name for t in (T, E, A)]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.dialect.name == "postgresql":
            for name in tables:
                conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
            conn.exec_driver_sql("CHECKPOINT")
        else:
            conn.exec_driver_sql(f"ANALYZE TABLE {', '.join(tables)}").all()


def max_task_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(T.c.id), 0))).scalar_one())


def unfinished_after(conn: sa.Connection, after_id: int) -> int:
    """Tasks with id > `after_id` not yet completed (a count: for the progress bar)."""
    q = sa.select(sa.func.count()).where(T.c.id > after_id, T.c.status != TaskStatus.COMPLETED.value)
    return int(conn.execute(q).scalar_one())


# every status but completed, named: the status-first indexes find them without a scan
_NOT_COMPLETED = [s.value for s in TaskStatus if s is not TaskStatus.COMPLETED]


def any_unfinished_after(conn: sa.Connection, after_id: int) -> bool:
    """Is a task with id > `after_id` not completed yet? One index probe a status, however
    many tasks there are: the bench asks this often while the workers run."""
    q = sa.select(T.c.id).where(T.c.status.in_(_NOT_COMPLETED), T.c.id > after_id).limit(1)
    return conn.execute(q).first() is not None


def attempt_span(conn: sa.Connection, after_id: int, upto_id: int) -> tuple[int, datetime | None, datetime | None]:
    """(closed attempts, first start, last end) of tasks with after_id < id <= upto_id."""
    q = sa.select(sa.func.count(), sa.func.min(A.c.started_at), sa.func.max(A.c.ended_at)).where(
        A.c.task_id > after_id, A.c.task_id <= upto_id, A.c.ended_at.is_not(None)
    )
    n, first, last = conn.execute(q).one()
    return int(n), first, last


def start_latencies_ms(conn: sa.Connection, ids: Sequence[int]) -> list[float]:
    """created_at → first attempt's started_at, in milliseconds, of these tasks (the attempt
    row once it ended, else the task row while that attempt is still in progress)."""
    first = sa.case((T.c.attempt == 1, T.c.started_at), else_=None)
    q = (
        sa.select(T.c.created_at, sa.func.coalesce(A.c.started_at, first).label("started_at"))
        .outerjoin(A, sa.and_(A.c.task_id == T.c.id, A.c.attempt == 1))
        .where(T.c.id.in_(list(ids)))
    )
    return [(s - c).total_seconds() * 1000.0 for c, s in conn.execute(q).all() if s is not None]


def started(conn: sa.Connection, task_id: int) -> bool:
    """Whether the task's first attempt has started (a claim numbers it on the task row)."""
    q = sa.select(T.c.attempt).where(T.c.id == task_id)
    return int(conn.execute(q).scalar_one_or_none() or 0) >= 1


def attempts_per_worker(conn: sa.Connection, after_id: int, upto_id: int) -> list[int]:
    """Attempts each worker started on tasks with after_id < id <= upto_id (workers with none absent)."""
    q = sa.select(sa.func.count()).where(A.c.task_id > after_id, A.c.task_id <= upto_id).group_by(A.c.worker_id)
    return [int(n) for (n,) in conn.execute(q).all()]


def server_backend_pids(conn: sa.Connection) -> list[int]:
    """PostgreSQL: the process ids of the server backends connected to this database (through a
    pooler: the pooler's server connections); empty elsewhere."""
    if conn.dialect.name != "postgresql":
        return []
    q = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
    )
    return [int(pid) for (pid,) in conn.execute(q).all()]


def is_local_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL server on this machine (its processes are in our /proc)."""
    u = sa.make_url(url)
    return u.get_backend_name() == "postgresql" and (u.host or "localhost") in ("localhost", "127.0.0.1", "::1")


def same_database_on(server_url: str, database_url: str) -> str:
    """`server_url` pointed at the database `database_url` names (e.g. a direct URL for LISTEN)."""
    name = sa.make_url(database_url).database
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
