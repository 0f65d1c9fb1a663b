"""entity flows: a flow or chain bound to an entity projects one row, keyed by the flow

Revision ID: 0012
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowd_entity_flows",
        sa.Column("flow_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("join_task_id", sa.BigInteger(), nullable=True),
        sa.Column("result", fs.JsonText(), nullable=True),
        sa.Column("error", fs.LongText, nullable=True),
        sa.Column("created_at", fs.Millis(), nullable=False),
        sa.Column("updated_at", fs.Millis(), nullable=False),
        sa.Column("started_at", fs.Millis(), nullable=True),
        sa.Column("ended_at", fs.Millis(), nullable=True),
        sa.PrimaryKeyConstraint("flow_id"),
    )
    op.create_index(
        "ix_flowd_entity_flows_entity", "flowd_entity_flows", ["entity_type", "entity_id", "flow_id"], unique=False
    )
    op.create_index("ix_flowd_entity_flows_join", "flowd_entity_flows", ["join_task_id"], unique=False)
    collation = fs.mysql_binary_collation(op.get_bind().dialect)
    if collation is not None:  # as every flowd table on MySQL (0007): keys compare byte for byte
        op.execute(f"ALTER TABLE flowd_entity_flows CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")


def downgrade() -> None:
    op.drop_index("ix_flowd_entity_flows_join", table_name="flowd_entity_flows")
    op.drop_index("ix_flowd_entity_flows_entity", table_name="flowd_entity_flows")
    op.drop_table("flowd_entity_flows")
