"""constraint groups: keys table, each task's keys, and the tasks' constrained flag

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowd_constraint_keys",
        sa.Column("ref", sa.String(length=400), nullable=False),
        sa.Column("grp", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("cooldown", sa.Float(), nullable=False),
        sa.Column("available_at", fs.Millis(), nullable=True),
        sa.Column("updated_at", fs.Millis(), nullable=False),
        sa.PrimaryKeyConstraint("ref"),
    )
    op.create_table(
        "flowd_task_constraints",
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ref", sa.String(length=400), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "ref"),
    )
    with op.batch_alter_table("flowd_task_constraints", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_task_constraints_ref", ["ref", "task_id"], unique=False)
    # plain ALTERs, not a batch: on SQLite a batch could rebuild flowd_tasks from reflection,
    # and reflection loses the DESC of the claim index
    op.add_column("flowd_tasks", sa.Column("constrained", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_flowd_tasks_constrained", "flowd_tasks", ["constrained", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_flowd_tasks_constrained", table_name="flowd_tasks")
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_column("constrained")
    with op.batch_alter_table("flowd_task_constraints", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_task_constraints_ref")
    op.drop_table("flowd_task_constraints")
    op.drop_table("flowd_constraint_keys")
