"""retry backoff: each task's backoff policy (fixed or exponential), its cap and jitter

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTERs (no batch rebuild of flowd_tasks on SQLite: it would lose the claim index's DESC);
    # the server defaults give existing rows today's behaviour: a fixed interval
    op.add_column(
        "flowd_tasks", sa.Column("retry_backoff", sa.String(length=16), nullable=False, server_default="fixed")
    )
    op.add_column("flowd_tasks", sa.Column("retry_max_interval", sa.Float(), nullable=False, server_default="3600"))
    op.add_column("flowd_tasks", sa.Column("retry_jitter", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_column("retry_jitter")
        batch_op.drop_column("retry_max_interval")
        batch_op.drop_column("retry_backoff")
