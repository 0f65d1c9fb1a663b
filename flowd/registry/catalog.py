"""Publishing the handlers a worker serves, and reading what the fleet serves.

`flowd handlers` lists the live rows; `flowd submit` falls back on them for a name the
CLI's own plugin directory does not declare (a CLI on another machine than the workers),
and so does a worker resolving a child or flow step that other workers serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flowd.clock import after
from flowd.model import HandlerRecord
from flowd.plugins import Registry
from flowd.rules import options as opt
from flowd.store import handlers as store
from flowd.store.db import Database


def rows_of(reg: Registry) -> list[dict[str, Any]]:
    """What a worker publishes about each handler: options, version and plugin file name."""
    return [
        {
            "name": spec.name,
            "options": dict(spec.options),
            "version": spec.version,
            # the file name only: the directory is this machine's business
            "source": Path(spec.source).name if spec.source else None,
        }
        for spec in (reg.handlers[n] for n in reg.names())
    ]


def publish(db: Database, worker_id: str, reg: Registry, ttl: float, now: datetime) -> None:
    """Replace this worker's published handlers with those of `reg`, valid for `ttl` seconds."""
    with db.write() as conn:
        store.publish(conn, worker_id, rows_of(reg), now, after(now, ttl))
    # separately, so the publishing transaction only ever touches this worker's rows
    with db.write() as conn:
        store.purge_expired(conn, now)


def renew(db: Database, worker_id: str, reg: Registry, ttl: float, now: datetime) -> None:
    """Extend this worker's rows; republish when they are gone (expired and purged meanwhile)."""
    with db.write() as conn:
        kept = store.renew(conn, worker_id, after(now, ttl))
    if kept != len(reg.handlers):
        publish(db, worker_id, reg, ttl, now)


def withdraw(db: Database, worker_id: str) -> None:
    """Remove this worker's rows (a clean stop)."""
    with db.write() as conn:
        store.withdraw(conn, worker_id)


def fleet_size(db: Database, now: datetime) -> int:
    """How many workers serve handlers now (those that published and keep renewing)."""
    with db.read() as conn:
        return store.live_workers(conn, now)


def live(db: Database, now: datetime, name: str | None = None) -> list[HandlerRecord]:
    """The handlers live workers serve (all, or those of one name)."""
    with db.read() as conn:
        return store.live(conn, now, name)


def newest_options(served: Sequence[HandlerRecord]) -> dict[str, Any] | None:
    """The task options of the newest publication among `served` (one name), None if none."""
    if not served:
        return None
    newest = max(served, key=lambda h: h.published_at)
    return {k: v for k, v in newest.options.items() if k in (*opt.OPTION_KEYS, "constraints")}
