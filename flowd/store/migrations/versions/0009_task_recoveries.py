"""task recoveries: attempts in a row interrupted by the death of their worker

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ALTER (no batch rebuild of flowd_tasks on SQLite); existing tasks start at 0
    op.add_column("flowd_tasks", sa.Column("recoveries", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_column("recoveries")
