"""flows and chains: the flows table, and each step task's flow id and index

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowd_flows",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_policy", sa.String(length=16), nullable=False),
        sa.Column("deadline", fs.Millis(), nullable=True),
        sa.Column("step_count", sa.Integer(), nullable=False),
        sa.Column("spec", fs.JsonText(), nullable=False),
        sa.Column("join_task_id", sa.BigInteger(), nullable=True),
        sa.Column("aborted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("timed_out", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("result", fs.JsonText(), nullable=True),
        sa.Column("error", fs.LongText, nullable=True),
        sa.Column("starter_id", sa.BigInteger(), nullable=True),
        sa.Column("entity_type", sa.String(length=64), nullable=True),
        sa.Column("entity_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", fs.Millis(), nullable=False),
        sa.Column("updated_at", fs.Millis(), nullable=False),
        sa.Column("finished_at", fs.Millis(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowd_flows", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_flows_status_deadline", ["status", "deadline"], unique=False)
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flow_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("flow_step", sa.Integer(), nullable=True))
        batch_op.create_index("ix_flowd_tasks_flow", ["flow_id", "flow_step"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_tasks_flow")
        batch_op.drop_column("flow_step")
        batch_op.drop_column("flow_id")
    with op.batch_alter_table("flowd_flows", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_flows_status_deadline")
    op.drop_table("flowd_flows")
