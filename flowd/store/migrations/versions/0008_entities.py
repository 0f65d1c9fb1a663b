"""entities: the projection of tasks bound to a domain object, and each task's entity

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flowd_entities",
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", fs.JsonText(), nullable=True),
        sa.Column("error", fs.LongText, nullable=True),
        sa.Column("created_at", fs.Millis(), nullable=False),
        sa.Column("updated_at", fs.Millis(), nullable=False),
        sa.Column("started_at", fs.Millis(), nullable=True),
        sa.Column("ended_at", fs.Millis(), nullable=True),
        sa.PrimaryKeyConstraint("entity_type", "entity_id", "task_id"),
    )
    op.create_index("ix_flowd_entities_task", "flowd_entities", ["task_id"], unique=False)
    collation = fs.mysql_binary_collation(op.get_bind().dialect)
    if collation is not None:  # as every flowd table on MySQL (0007): keys compare byte for byte
        op.execute(f"ALTER TABLE flowd_entities CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")
    # plain ALTERs (no batch rebuild of flowd_tasks on SQLite: it would lose the claim index's DESC)
    op.add_column("flowd_tasks", sa.Column("entity_type", sa.String(length=64), nullable=True))
    op.add_column("flowd_tasks", sa.Column("entity_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_column("entity_id")
        batch_op.drop_column("entity_type")
    op.drop_index("ix_flowd_entities_task", table_name="flowd_entities")
    op.drop_table("flowd_entities")
