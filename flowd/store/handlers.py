"""The fleet-wide handler registry: each worker publishes the handlers it serves.

A worker replaces its rows when its handlers change (start, hot reload) and renews their
expiry with its heartbeat; rows that are not renewed expire, so a killed worker's handlers
drop out of the listing without anyone cleaning up after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.model import HandlerRecord, WorkerStatus
from flowd.store.schema import handlers as H
from flowd.store.schema import workers as W


def publish(
    conn: sa.Connection, worker_id: str, rows: Sequence[Mapping[str, Any]], now: datetime, expires_at: datetime
) -> None:
    """Replace this worker's rows by `rows` (each: name, options, version, source)."""
    conn.execute(sa.delete(H).where(H.c.worker_id == worker_id))
    if rows:
        conn.execute(
            sa.insert(H),
            [
                {
                    "worker_id": worker_id,
                    "name": r["name"],
                    "options": dict(r.get("options") or {}) or None,
                    "version": r.get("version"),
                    "source": r.get("source"),
                    "published_at": now,
                    "expires_at": expires_at,
                }
                for r in rows
            ],
        )


def renew(conn: sa.Connection, worker_id: str, expires_at: datetime) -> int:
    """Extend the expiry of this worker's rows; returns how many it still has."""
    res = conn.execute(sa.update(H).where(H.c.worker_id == worker_id).values(expires_at=expires_at))
    return res.rowcount or 0


def withdraw(conn: sa.Connection, worker_id: str) -> None:
    conn.execute(sa.delete(H).where(H.c.worker_id == worker_id))


def purge_expired(conn: sa.Connection, now: datetime) -> int:
    """Delete the rows of workers that stopped renewing them."""
    return conn.execute(sa.delete(H).where(H.c.expires_at < now)).rowcount or 0


def live(conn: sa.Connection, now: datetime, name: str | None = None) -> list[HandlerRecord]:
    """Unexpired rows of workers not known to be superseded or dead, by name then worker."""
    gone = sa.select(W.c.worker_id).where(W.c.status != WorkerStatus.ACTIVE.value)
    q = sa.select(H).where(H.c.expires_at >= now, H.c.worker_id.not_in(gone))
    if name is not None:
        q = q.where(H.c.name == name)
    return [_record(r) for r in conn.execute(q.order_by(H.c.name, H.c.worker_id)).all()]


def live_workers(conn: sa.Connection, now: datetime) -> int:
    """How many workers have unexpired rows (the fleet serving handlers right now)."""
    q = sa.select(sa.func.count(sa.distinct(H.c.worker_id))).where(H.c.expires_at >= now)
    return int(conn.execute(q).scalar_one())


def _record(row: Any) -> HandlerRecord:
    m = row._mapping
    return HandlerRecord(
        name=m["name"],
        worker_id=m["worker_id"],
        options=dict(m["options"] or {}),
        version=m["version"],
        source=m["source"],
        published_at=m["published_at"],
        expires_at=m["expires_at"],
    )
