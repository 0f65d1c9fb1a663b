"""Worker registry rows: leases, supersede, reaping; plus fleet-wide singleton leases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import Page, WorkerRecord, WorkerStatus
from flowd.store.schema import leases as L
from flowd.store.schema import workers as W

ACTIVE = WorkerStatus.ACTIVE.value


def upsert_active(
    conn: sa.Connection,
    worker_id: str,
    pod_id: str | None,
    host: str,
    pid: int,
    handlers: Sequence[str],
    now: datetime,
    expires_at: datetime,
) -> None:
    """Register (or re-register) this worker as active with a fresh lease."""
    values = {
        "pod_id": pod_id,
        "status": ACTIVE,
        "host": host,
        "pid": pid,
        "last_seen_at": now,
        "expires_at": expires_at,
        "handlers": sorted(handlers),
    }
    res = conn.execute(sa.update(W).where(W.c.worker_id == worker_id).values(**values))
    if (res.rowcount or 0) == 0:
        conn.execute(sa.insert(W).values(worker_id=worker_id, registered_at=now, **values))


def supersede_pod(conn: sa.Connection, pod_id: str, keep: str) -> list[str]:
    """Mark every other active worker of the pod superseded; returns their ids."""
    ids = [
        str(r[0])
        for r in conn.execute(
            sa.select(W.c.worker_id).where(W.c.pod_id == pod_id, W.c.status == ACTIVE, W.c.worker_id != keep)
        ).all()
    ]
    if ids:
        conn.execute(
            sa.update(W)
            .where(W.c.worker_id.in_(ids), W.c.status == ACTIVE)
            .values(status=WorkerStatus.SUPERSEDED.value)
        )
    return ids


def reap_expired(conn: sa.Connection, now: datetime) -> list[str]:
    """Mark active workers whose lease has expired dead; returns their ids."""
    ids = [
        str(r[0])
        for r in conn.execute(sa.select(W.c.worker_id).where(W.c.status == ACTIVE, W.c.expires_at < now)).all()
    ]
    if ids:
        conn.execute(
            sa.update(W).where(W.c.worker_id.in_(ids), W.c.status == ACTIVE).values(status=WorkerStatus.DEAD.value)
        )
    return ids


def renew(conn: sa.Connection, worker_id: str, now: datetime, expires_at: datetime, handlers: Sequence[str]) -> bool:
    """Extend the lease, only while still active; False means the lease was lost."""
    res = conn.execute(
        sa.update(W)
        .where(W.c.worker_id == worker_id, W.c.status == ACTIVE)
        .values(last_seen_at=now, expires_at=expires_at, handlers=sorted(handlers))
    )
    return (res.rowcount or 0) == 1


def mark(conn: sa.Connection, worker_id: str, status: WorkerStatus, now: datetime) -> None:
    conn.execute(sa.update(W).where(W.c.worker_id == worker_id).values(status=status.value, last_seen_at=now))


def active_peer_in_pod(conn: sa.Connection, pod_id: str, worker_id: str, now: datetime) -> str | None:
    row = conn.execute(
        sa.select(W.c.worker_id).where(
            W.c.pod_id == pod_id, W.c.status == ACTIVE, W.c.worker_id != worker_id, W.c.expires_at >= now
        )
    ).first()
    return str(row[0]) if row else None


def holds_lease(conn: sa.Connection, worker_id: str) -> bool:
    """True while this worker's row is active; locks the row (servers) until commit.

    Called in the claim transaction: a reaper that marks the worker dead waits for the
    claim to commit and then recovers what it claimed, so no task is left running under a
    worker that is no longer active.
    """
    q = sa.select(W.c.status).where(W.c.worker_id == worker_id)
    if conn.dialect.name != "sqlite":
        q = q.with_for_update()
    row = conn.execute(q).first()
    return row is not None and row[0] == ACTIVE


def get_many(conn: sa.Connection, worker_ids: Sequence[str]) -> dict[str, WorkerRecord]:
    """The registry rows of these workers (absent: never registered, i.e. no pod id)."""
    if not worker_ids:
        return {}
    rows = conn.execute(sa.select(W).where(W.c.worker_id.in_(list(set(worker_ids))))).all()
    return {str(r._mapping["worker_id"]): to_record(r) for r in rows}


def to_record(row: Any, running: int = 0) -> WorkerRecord:
    m = row._mapping
    return WorkerRecord(
        worker_id=m["worker_id"],
        pod_id=m["pod_id"],
        status=WorkerStatus(m["status"]),
        host=m["host"],
        pid=int(m["pid"]),
        registered_at=m["registered_at"],
        last_seen_at=m["last_seen_at"],
        expires_at=m["expires_at"],
        handlers=list(m["handlers"] or []),
        running_tasks=running,
    )


def get(conn: sa.Connection, worker_id: str) -> WorkerRecord | None:
    row = conn.execute(sa.select(W).where(W.c.worker_id == worker_id)).first()
    return to_record(row) if row else None


def query(conn: sa.Connection, running: dict[str, int], status: str | None, limit: int, offset: int) -> Page:
    q = sa.select(W)
    cq = sa.select(sa.func.count()).select_from(W)
    if status:
        q = q.where(W.c.status == status)
        cq = cq.where(W.c.status == status)
    total = int(conn.execute(cq).scalar_one())
    # active first, then newest
    order = sa.case((W.c.status == ACTIVE, 0), else_=1)
    rows = conn.execute(q.order_by(order, W.c.registered_at.desc()).limit(limit).offset(offset)).all()
    items = [to_record(r, running.get(str(r._mapping["worker_id"]), 0)) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


def take_lease(conn: sa.Connection, name: str, holder: str, now: datetime, expires_at: datetime) -> bool:
    """Take (or keep) a fleet-wide singleton lease; False while someone else holds it."""
    row = (
        conn.execute(sa.select(L).where(L.c.name == name).with_for_update()).first()
        if conn.dialect.name != "sqlite"
        else conn.execute(sa.select(L).where(L.c.name == name)).first()
    )
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(L).values(name=name, holder=holder, expires_at=expires_at))
        except sa.exc.IntegrityError:
            return False
        return True
    m = row._mapping
    if m["holder"] != holder and m["expires_at"] > now:
        return False
    conn.execute(sa.update(L).where(L.c.name == name).values(holder=holder, expires_at=expires_at))
    return True


def lock_named(conn: sa.Connection, name: str, now: datetime) -> None:
    """Serialise a fleet-wide critical section until the caller's transaction ends: a row lock
    on `flowd_leases` row `name` (created on first use). SQLite's write transaction already
    holds the whole file's write lock."""
    if conn.dialect.name == "sqlite":
        return
    q = sa.select(L.c.name).where(L.c.name == name).with_for_update()
    if conn.execute(q).first() is not None:
        return
    try:
        # a concurrent creator blocks here on the key until it commits, then fails: lock it then
        with conn.begin_nested():
            conn.execute(sa.insert(L).values(name=name, holder="lock", expires_at=now))
    except sa.exc.IntegrityError:
        conn.execute(q).first()
