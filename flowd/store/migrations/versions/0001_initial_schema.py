"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 23:53:34.713538
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import flowd.store.schema as fs

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "flowd_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", fs.Millis(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "flowd_task_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("started_at", fs.Millis(), nullable=False),
        sa.Column("ended_at", fs.Millis(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column(
            "error",
            sa.Text().with_variant(mysql.LONGTEXT(), "mariadb").with_variant(mysql.LONGTEXT(), "mysql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_flowd_attempts_task_attempt"),
    )
    with op.batch_alter_table("flowd_task_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_attempts_worker", ["worker_id", "ended_at"], unique=False)

    op.create_table(
        "flowd_task_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("root_id", sa.BigInteger(), nullable=True),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("stage", sa.Integer(), nullable=True),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=True),
        sa.Column(
            "message",
            sa.Text().with_variant(mysql.LONGTEXT(), "mariadb").with_variant(mysql.LONGTEXT(), "mysql"),
            nullable=True,
        ),
        sa.Column("metadata", fs.JsonText(), nullable=True),
        sa.Column("created_at", fs.Millis(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowd_task_events", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_events_created", ["created_at"], unique=False)
        batch_op.create_index("ix_flowd_events_root", ["root_id", "id"], unique=False)
        batch_op.create_index("ix_flowd_events_task", ["task_id", "id"], unique=False)

    op.create_table(
        "flowd_tasks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("payload", fs.JsonText(), nullable=True),
        sa.Column("result", fs.JsonText(), nullable=True),
        sa.Column(
            "error",
            sa.Text().with_variant(mysql.LONGTEXT(), "mariadb").with_variant(mysql.LONGTEXT(), "mysql"),
            nullable=True,
        ),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=True),
        sa.Column("labels", fs.JsonText(), nullable=True),
        sa.Column("cron_expr", sa.String(length=255), nullable=True),
        sa.Column("cron_tz", sa.String(length=64), nullable=True),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("stage", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "context",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mariadb").with_variant(mysql.LONGBLOB(), "mysql"),
            nullable=True,
        ),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("root_id", sa.BigInteger(), nullable=True),
        sa.Column("parent_stage", sa.Integer(), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_interval", sa.Float(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("next_run_time", fs.Millis(), nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", fs.Millis(), nullable=True),
        sa.Column("heartbeat_at", fs.Millis(), nullable=True),
        sa.Column("current_stage_name", sa.String(length=255), nullable=True),
        sa.Column("progress_text", sa.Text(), nullable=True),
        sa.Column("progress_percent", sa.Float(), nullable=True),
        sa.Column("last_event_type", sa.String(length=64), nullable=True),
        sa.Column("last_event_time", fs.Millis(), nullable=True),
        sa.Column("created_at", fs.Millis(), nullable=False),
        sa.Column("updated_at", fs.Millis(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_tasks_claim", ["status", "next_run_time", "priority"], unique=False)
        batch_op.create_index("ix_flowd_tasks_key", ["key"], unique=False)
        batch_op.create_index("ix_flowd_tasks_name_status", ["name", "status"], unique=False)
        batch_op.create_index("ix_flowd_tasks_parent", ["parent_id", "parent_stage"], unique=False)
        batch_op.create_index("ix_flowd_tasks_root", ["root_id"], unique=False)
        batch_op.create_index("ix_flowd_tasks_status_updated", ["status", "updated_at"], unique=False)
        batch_op.create_index("ix_flowd_tasks_tag", ["tag"], unique=False)
        batch_op.create_index("ix_flowd_tasks_worker", ["worker_id", "status"], unique=False)

    op.create_table(
        "flowd_workers",
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("pod_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("registered_at", fs.Millis(), nullable=False),
        sa.Column("last_seen_at", fs.Millis(), nullable=False),
        sa.Column("expires_at", fs.Millis(), nullable=False),
        sa.Column("handlers", fs.JsonText(), nullable=True),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    with op.batch_alter_table("flowd_workers", schema=None) as batch_op:
        batch_op.create_index("ix_flowd_workers_pod", ["pod_id", "status"], unique=False)
        batch_op.create_index("ix_flowd_workers_status_expires", ["status", "expires_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("flowd_workers", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_workers_status_expires")
        batch_op.drop_index("ix_flowd_workers_pod")

    op.drop_table("flowd_workers")
    with op.batch_alter_table("flowd_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_tasks_worker")
        batch_op.drop_index("ix_flowd_tasks_tag")
        batch_op.drop_index("ix_flowd_tasks_status_updated")
        batch_op.drop_index("ix_flowd_tasks_root")
        batch_op.drop_index("ix_flowd_tasks_parent")
        batch_op.drop_index("ix_flowd_tasks_name_status")
        batch_op.drop_index("ix_flowd_tasks_key")
        batch_op.drop_index("ix_flowd_tasks_claim")

    op.drop_table("flowd_tasks")
    with op.batch_alter_table("flowd_task_events", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_events_task")
        batch_op.drop_index("ix_flowd_events_root")
        batch_op.drop_index("ix_flowd_events_created")

    op.drop_table("flowd_task_events")
    with op.batch_alter_table("flowd_task_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_flowd_attempts_worker")

    op.drop_table("flowd_task_attempts")
    op.drop_table("flowd_leases")
