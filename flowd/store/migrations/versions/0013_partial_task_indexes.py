"""partial task indexes: a task row's claim and end add entries only to the indexes they need

A task row is rewritten at its claim and at its end, and PostgreSQL cannot update it in
place (`status` is indexed), so each rewrite added an entry to all eleven indexes of
flowd_tasks. On SQLite and PostgreSQL the claim index now holds pending rows only, the
worker index running rows only, and the indexes of optional columns (parent, tag, key,
flow, constraint flag) only rows where they are set. MySQL/MariaDB have no partial
indexes: nothing changes there.

Revision ID: 0013
Revises: 0011
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_T = "flowd_tasks"
# name → (columns, predicate); the claim index's columns are built in _columns (DESC)
_PARTIAL = {
    "ix_flowd_tasks_parent": (["parent_id", "parent_stage"], "parent_id IS NOT NULL"),
    "ix_flowd_tasks_worker": (["worker_id", "status"], "status = 'running'"),
    "ix_flowd_tasks_tag": (["tag"], "tag IS NOT NULL"),
    "ix_flowd_tasks_key": (["key"], "key IS NOT NULL"),
    "ix_flowd_tasks_flow": (["flow_id", "flow_step"], "flow_id IS NOT NULL"),
    "ix_flowd_tasks_constrained": (["constrained", "status"], "constrained = true"),
    "ix_flowd_tasks_claim": ([], "status = 'pending'"),
}


def _columns(name: str, columns: list[str]) -> list[str | sa.ColumnElement[Any]]:
    if name == "ix_flowd_tasks_claim":
        return ["status", sa.column("priority").desc(), "next_run_time", "id"]
    out: list[str | sa.ColumnElement[Any]] = list(columns)
    return out


def _partial_ok() -> bool:
    return op.get_bind().dialect.name in ("sqlite", "postgresql")


def upgrade() -> None:
    if not _partial_ok():
        return
    for name, (columns, where) in _PARTIAL.items():
        op.drop_index(name, table_name=_T)
        op.create_index(name, _T, _columns(name, columns), sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    if not _partial_ok():
        return
    for name, (columns, _where) in _PARTIAL.items():
        op.drop_index(name, table_name=_T)
        op.create_index(name, _T, _columns(name, columns))
