"""the attempt in progress lives on its task row; its attempt row is written once, when it ends

A claim used to insert an attempt row and the end to update it. The running task row
already holds the attempt's worker, number, stage and start; it now holds its handler
version too, and the attempt row is written once, ended. Existing databases keep their
history: an open attempt row of a task that is running that very attempt moves onto the
task row (its handler version) and the row is removed (it is written again, complete,
when the attempt ends); every other row stays as it is.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# open attempt rows that are the current attempt of their running task
_CURRENT = "a.ended_at IS NULL AND a.task_id = t.id AND a.attempt = t.attempt AND t.status = 'running'"


def upgrade() -> None:
    op.add_column("flowd_tasks", sa.Column("handler_version", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute(
            "UPDATE flowd_tasks t JOIN flowd_task_attempts a ON a.task_id = t.id "
            f"SET t.handler_version = a.handler_version WHERE {_CURRENT}"
        )
    else:
        op.execute(
            "UPDATE flowd_tasks SET handler_version = (SELECT a.handler_version FROM flowd_task_attempts a "
            "WHERE a.task_id = flowd_tasks.id AND a.attempt = flowd_tasks.attempt AND a.ended_at IS NULL) "
            "WHERE status = 'running'"
        )
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute(f"DELETE a FROM flowd_task_attempts a JOIN flowd_tasks t ON t.id = a.task_id WHERE {_CURRENT}")
    else:
        op.execute(
            "DELETE FROM flowd_task_attempts WHERE ended_at IS NULL AND EXISTS (SELECT 1 FROM flowd_tasks t "
            "WHERE t.id = flowd_task_attempts.task_id AND t.attempt = flowd_task_attempts.attempt "
            "AND t.status = 'running')"
        )


def downgrade() -> None:
    # the attempts in progress get their open rows back
    op.execute(
        "INSERT INTO flowd_task_attempts (task_id, attempt, stage, worker_id, started_at, handler_version) "
        "SELECT id, attempt, stage, worker_id, started_at, handler_version FROM flowd_tasks "
        "WHERE status = 'running' AND started_at IS NOT NULL"
    )
    op.drop_column("flowd_tasks", "handler_version")
