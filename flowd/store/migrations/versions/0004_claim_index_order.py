"""the claim index follows the claim's ORDER BY (priority desc, next_run_time, id)

A claim then reads the first due rows of the pending range in index order and stops at
its LIMIT, instead of sorting every due pending task: its cost no longer grows with the
backlog, and the status prefix keeps finished history out of it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_flowd_tasks_claim", table_name="flowd_tasks")
    op.create_index(
        "ix_flowd_tasks_claim",
        "flowd_tasks",
        ["status", sa.column("priority").desc(), "next_run_time", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_flowd_tasks_claim", table_name="flowd_tasks")
    op.create_index("ix_flowd_tasks_claim", "flowd_tasks", ["status", "next_run_time", "priority"])
