"""the fleet-wide handler registry: what each live worker serves

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowd_handlers",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("options", fs.JsonText(), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("published_at", fs.Millis(), nullable=False),
        sa.Column("expires_at", fs.Millis(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", "name"),
    )
    with op.batch_alter_table("flowd_handlers", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_handlers_name_expires", ["name", "expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("flowd_handlers", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_handlers_name_expires")
    op.drop_table("flowd_handlers")
