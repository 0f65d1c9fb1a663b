"""Schema migrations (Alembic), run programmatically; one lock so concurrent starters agree."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

VERSION_TABLE = "flowd_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"


def config(conn: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(config()).get_current_head()
    assert rev is not None
    return rev


def is_known(revision: str) -> bool:
    """Whether `revision` is one of this code's migrations."""
    script = ScriptDirectory.from_config(config())
    return any(r.revision == revision for r in script.walk_revisions())


def current(conn: sa.Connection) -> str | None:
    """The revision the database is at (None: no flowd schema yet)."""
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


@contextlib.contextmanager
def schema_lock(conn: sa.Connection) -> Iterator[None]:
    """Serialise schema changes across processes (SQLite: the write lock of the transaction)."""
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(726354)"))
        yield
    elif name in ("mysql", "mariadb"):
        conn.execute(sa.text("SELECT GET_LOCK('flowd_schema', 120)"))
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK('flowd_schema')"))
    else:
        yield


def upgrade(conn: sa.Connection) -> tuple[str | None, str]:
    """Migrate to head; returns (from, to) revisions. The caller holds `schema_lock`."""
    before = current(conn)
    target = head()
    if before != target:
        command.upgrade(config(conn), "head")
    return before, target
