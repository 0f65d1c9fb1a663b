"""Constraint keys: store a task's keys, lock keys for a claim, free them when a run ends.

Slots are never counted in a counter: a key's running count is the number of its tasks
whose status is `running`, so a crashed worker's slot frees the moment its task is
recovered. The keys table holds one row per key: the row a claim locks (servers: FOR
UPDATE SKIP LOCKED, in ref order) before it counts, and `available_at`, the end of the
last run plus the group's cooldown, written in the transaction that ends the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.clock import after
from flowd.model import TaskKey, TaskStatus
from flowd.store.schema import constraint_keys as K
from flowd.store.schema import is_pending
from flowd.store.schema import task_constraints as TC
from flowd.store.schema import tasks as T

RUNNING = TaskStatus.RUNNING.value
PENDING = TaskStatus.PENDING.value


def _insert_ignore(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert key rows that do not exist yet; a concurrent submitter's insert is not an error."""
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(K).on_conflict_do_nothing(index_elements=["ref"]), rows)
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        conn.execute(lite_insert(K).on_conflict_do_nothing(index_elements=["ref"]), rows)
    else:
        conn.execute(sa.insert(K).prefix_with("IGNORE"), rows)


def register(conn: sa.Connection, task_id: int, keys: Sequence[TaskKey], now: datetime) -> None:
    """Store a new task's keys; create each key's row, or refresh its limits if they changed."""
    conn.execute(sa.insert(TC), [{"task_id": task_id, "ref": k.ref} for k in keys])
    rows = [
        {
            "ref": k.ref,
            "grp": k.group,
            "key": k.key,
            "max_concurrent": k.max_concurrent,
            "cooldown": k.cooldown,
            "available_at": None,
            "updated_at": now,
        }
        for k in keys
    ]
    _insert_ignore(conn, rows)
    for k in keys:
        conn.execute(
            sa.update(K)
            .where(K.c.ref == k.ref, sa.or_(K.c.max_concurrent != k.max_concurrent, K.c.cooldown != k.cooldown))
            .values(max_concurrent=k.max_concurrent, cooldown=k.cooldown, updated_at=now)
        )


def release(conn: sa.Connection, task_id: int, now: datetime) -> None:
    """A run of the task ended (any way): its keys are free again after their cooldown.

    Also keeps a claimer whose clock reads earlier than this end from starting before it.
    """
    rows = conn.execute(
        sa.select(K.c.ref, K.c.cooldown).join(TC, TC.c.ref == K.c.ref).where(TC.c.task_id == task_id)
    ).all()
    for ref, cooldown in sorted(rows):
        conn.execute(
            sa.update(K).where(K.c.ref == ref).values(available_at=after(now, float(cooldown)), updated_at=now)
        )


def any_pending(conn: sa.Connection) -> bool:
    """Is any constrained task pending? (one probe of ix_flowd_tasks_constrained)"""
    # the partial index's own terms, inline: the SQLite planner matches them literally
    q = sa.select(T.c.id).where(T.c.constrained == sa.literal_column("true"), is_pending(T.c.status)).limit(1)
    return conn.execute(q).first() is not None


def blocked_refs(conn: sa.Connection, now: datetime) -> set[str]:
    """Keys that cannot start a run now: cooling down, or as many running as allowed."""
    cooling = conn.execute(sa.select(K.c.ref).where(K.c.available_at > now)).scalars().all()
    full = conn.execute(
        sa.select(K.c.ref)
        .join(TC, TC.c.ref == K.c.ref)
        .join(T, T.c.id == TC.c.task_id)
        .where(T.c.status == RUNNING)
        .group_by(K.c.ref, K.c.max_concurrent)
        .having(sa.func.count() >= K.c.max_concurrent)
    ).scalars()
    return set(cooling) | set(full)


def eligible(blocked: Iterable[str]) -> Any:
    """A WHERE clause for the claim: unconstrained, or every key free and (FIFO) at its head.

    A key with max_concurrent 1 runs its tasks in submission order: a task waits while an
    older task of the same key is still pending.
    """
    mine, older = TC.alias("mine"), TC.alias("older")
    ot = T.alias("older_task")
    not_blocked = ~sa.exists().where(TC.c.task_id == T.c.id, TC.c.ref.in_(sorted(blocked)))
    behind = sa.exists().where(
        mine.c.task_id == T.c.id,
        K.c.ref == mine.c.ref,
        K.c.max_concurrent == 1,
        older.c.ref == mine.c.ref,
        older.c.task_id < mine.c.task_id,
        ot.c.id == older.c.task_id,
        ot.c.status == PENDING,
    )
    checks = sa.and_(~behind, not_blocked) if blocked else ~behind
    return sa.or_(T.c.constrained.is_(False), checks)


def keys_of(conn: sa.Connection, task_ids: Sequence[int]) -> dict[int, list[str]]:
    """task id → its key refs."""
    out: dict[int, list[str]] = {}
    if task_ids:
        for tid, ref in conn.execute(sa.select(TC.c.task_id, TC.c.ref).where(TC.c.task_id.in_(list(task_ids)))):
            out.setdefault(int(tid), []).append(str(ref))
    return out


def lock_free(conn: sa.Connection, refs: Iterable[str], now: datetime) -> dict[str, tuple[int, int, int]]:
    """Lock these keys (servers: skipping keys another claim holds) and read them afresh.

    Returns ref → (free slots now, FIFO head task id or 0, max_concurrent) for each key locked and not
    cooling down. Under the lock the running count is exact: another claim of the same key
    waits for this transaction (READ COMMITTED: later statements see its commit).
    """
    refs = sorted(set(refs))
    if not refs:
        return {}
    q = sa.select(K.c.ref, K.c.max_concurrent, K.c.available_at).where(K.c.ref.in_(refs)).order_by(K.c.ref)
    if conn.dialect.name != "sqlite":
        q = q.with_for_update(skip_locked=True)
    locked = {str(r): int(m) for r, m, avail in conn.execute(q).all() if avail is None or avail <= now}
    if not locked:
        return {}
    running: dict[str, int] = dict(
        conn.execute(
            sa.select(TC.c.ref, sa.func.count())
            .join(T, T.c.id == TC.c.task_id)
            .where(TC.c.ref.in_(list(locked)), T.c.status == RUNNING)
            .group_by(TC.c.ref)
        ).all()
    )
    heads: dict[str, int] = dict(
        conn.execute(
            sa.select(TC.c.ref, sa.func.min(TC.c.task_id))
            .join(T, T.c.id == TC.c.task_id)
            .where(TC.c.ref.in_(list(locked)), T.c.status == PENDING)
            .group_by(TC.c.ref)
        ).all()
    )
    return {ref: (cap - int(running.get(ref, 0)), int(heads.get(ref) or 0), cap) for ref, cap in locked.items()}


def in_use(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
    """Each key with tasks not yet final or a cooldown left: running and pending counts."""
    counts = conn.execute(
        sa.select(TC.c.ref, T.c.status, sa.func.count())
        .join(T, T.c.id == TC.c.task_id)
        .where(T.c.status.in_([RUNNING, PENDING]))
        .group_by(TC.c.ref, T.c.status)
    ).all()
    by_ref: dict[str, dict[str, int]] = {}
    for ref, status, n in counts:
        by_ref.setdefault(str(ref), {})[str(status)] = int(n)
    rows = conn.execute(sa.select(K).order_by(K.c.grp, K.c.key)).all()
    out = []
    for r in rows:
        m = r._mapping
        c = by_ref.get(m["ref"], {})
        left = max(0.0, (m["available_at"] - now).total_seconds()) if m["available_at"] is not None else 0.0
        if not c and left == 0:
            continue
        out.append(
            {
                "group": m["grp"],
                "key": m["key"],
                "max_concurrent": int(m["max_concurrent"]),
                "cooldown": float(m["cooldown"]),
                "running": c.get(RUNNING, 0),
                "pending": c.get(PENDING, 0),
                "cooldown_left": round(left, 3),
            }
        )
    return out


def delete_for(conn: sa.Connection, task_ids: Sequence[int]) -> None:
    """Forget the keys of deleted tasks (the key rows stay: they are tiny and reused)."""
    conn.execute(sa.delete(TC).where(TC.c.task_id.in_(list(task_ids))))
