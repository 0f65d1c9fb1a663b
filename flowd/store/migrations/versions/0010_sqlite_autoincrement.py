"""ids are never reused: SQLite's id tables become AUTOINCREMENT

Revision ID: 0010
Revises: 0009

SQLite gives a rowid table's new row max(id) + 1, so after the newest tasks were deleted
(`flowd delete`, retention) their ids were handed out again: "task 29" could mean two tasks.
AUTOINCREMENT never goes back, but SQLite sets it only when a table is created, so each
table is rebuilt: created anew from its reflected columns and constraints, its rows copied
with their ids, the old table dropped, the new one renamed, and its indexes re-created from
their original SQL (kept verbatim: the claim index's DESC survives). The copy leaves
sqlite_sequence at max(id); ids deleted before this migration cannot be known any more.

PostgreSQL sequences and MySQL 8 / MariaDB 10.2.4+ AUTO_INCREMENT counters (persisted across
server restarts) never go back: nothing to do there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateTable

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("flowd_tasks", "flowd_task_events", "flowd_task_attempts", "flowd_flows")


def _column(c: sa.Column[object]) -> sa.Column[object]:
    """The reflected column `c`, unbound from its table."""
    default = c.server_default
    text = getattr(default, "arg", None)
    return sa.Column(
        c.name,
        c.type,
        primary_key=c.primary_key,
        nullable=c.nullable,
        server_default=sa.text(str(getattr(text, "text", text))) if text is not None else None,
    )


def _rebuild(conn: sa.Connection, name: str, autoincrement: bool) -> None:
    sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).scalar()
    if sql is None or ("AUTOINCREMENT" in sql.upper()) == autoincrement:
        return
    indexes = [
        str(r[0])
        for r in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (name,)
        )
    ]
    old = sa.Table(name, sa.MetaData(), autoload_with=conn)
    new = sa.Table(
        f"_new_{name}",
        sa.MetaData(),
        *[_column(c) for c in old.columns],
        *[
            sa.UniqueConstraint(*[c.name for c in u.columns], name=u.name)
            for u in old.constraints
            if isinstance(u, sa.UniqueConstraint)
        ],
        sqlite_autoincrement=autoincrement,
    )
    conn.execute(CreateTable(new))
    columns = ", ".join(f'"{c.name}"' for c in old.columns)
    conn.exec_driver_sql(f'INSERT INTO "{new.name}" ({columns}) SELECT {columns} FROM "{name}" ORDER BY id')
    conn.exec_driver_sql(f'DROP TABLE "{name}"')
    conn.exec_driver_sql(f'ALTER TABLE "{new.name}" RENAME TO "{name}"')
    for index in indexes:
        conn.exec_driver_sql(index)


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    for name in TABLES:
        _rebuild(conn, name, autoincrement=True)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    for name in TABLES:
        _rebuild(conn, name, autoincrement=False)
