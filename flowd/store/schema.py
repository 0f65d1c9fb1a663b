"""The one schema definition (SQLAlchemy Core), shared by create_all and the migrations.

Timestamps are stored as integer milliseconds since the epoch (UTC): exact to the
millisecond, comparable and indexable the same way on SQLite, PostgreSQL and MySQL.
JSON values are stored as text that flowd encodes itself, so falsy results survive as given.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from flowd.clock import from_ms, to_ms
from flowd.rules.options import dump_json

metadata = sa.MetaData()

SCHEMA_REVISION = "0014"
"""The Alembic head this code expects; a test proves it matches the migrations."""

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Ids people see (tasks, events, attempts, flows) are never reused, on any database: SQLite
# tables with an id of this kind are AUTOINCREMENT (`sqlite_autoincrement=True`), else SQLite
# would hand out max(id) + 1 again after the newest rows were deleted; PostgreSQL sequences and
# MySQL 8 / MariaDB 10.2.4+ AUTO_INCREMENT counters never go back, across restarts too.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
LongBlob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def mysql_binary_collation(dialect: sa.Dialect) -> str | None:
    """The utf8mb4 collation that compares bytes without padding (MySQL/MariaDB), else None.

    Text then compares as on SQLite and PostgreSQL: case, accents and trailing spaces count.
    """
    if dialect.name not in ("mysql", "mariadb"):
        return None
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


class Millis(sa.TypeDecorator[datetime]):
    """An aware UTC datetime stored as BIGINT milliseconds."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> int | None:
        return None if value is None else to_ms(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else from_ms(int(value))


class JsonText(sa.TypeDecorator[Any]):
    """Any JSON value stored as text; SQL NULL means no value."""

    impl = LongText
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else dump_json(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


def _s(n: int) -> sa.String:
    return sa.String(n)


# Partial indexes (SQLite, PostgreSQL): a task row is rewritten at its claim and at its end,
# and PostgreSQL cannot update it in place (`status` is indexed), so every rewrite adds an
# entry to every index whose predicate the new row meets. A pending row is in the claim
# index only, a running one in the worker index only, and the optional columns (parent,
# tag, key, flow, constraint flag) are indexed only where set: a no-op task's two rewrites
# add 9 index entries instead of 22. MySQL/MariaDB have no partial indexes and index every
# row. The queries that must use these indexes name the predicate literally (below): the
# SQLite planner uses a partial index only for a query that repeats its WHERE term.
PENDING_SQL = "'pending'"
RUNNING_SQL = "'running'"
CONSTRAINED_SQL = "constrained = true"


def partial(where: str) -> dict[str, Any]:
    """The `sa.Index` keyword arguments of a partial index on SQLite and PostgreSQL."""
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def is_pending(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """`status = 'pending'` with the value inline, so the planner can match the claim index."""
    return column == sa.literal_column(PENDING_SQL, sa.String)


def is_running(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """`status = 'running'` with the value inline, so the planner can match the worker index."""
    return column == sa.literal_column(RUNNING_SQL, sa.String)


tasks = sa.Table(
    "flowd_tasks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", _s(128), nullable=False),
    sa.Column("type", _s(16), nullable=False),
    sa.Column("status", _s(32), nullable=False),
    sa.Column("payload", JsonText, nullable=True),
    sa.Column("result", JsonText, nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tag", _s(255), nullable=True),
    sa.Column("labels", JsonText, nullable=True),
    sa.Column("cron_expr", _s(255), nullable=True),
    sa.Column("cron_tz", _s(64), nullable=True),
    sa.Column("key", _s(255), nullable=True),
    sa.Column("stage", sa.Integer, nullable=False, server_default="0"),
    sa.Column("context", LongBlob, nullable=True),
    sa.Column("parent_id", sa.BigInteger, nullable=True),
    sa.Column("root_id", sa.BigInteger, nullable=True),
    sa.Column("parent_stage", sa.Integer, nullable=True),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("retry_interval", sa.Float, nullable=False),
    sa.Column("timeout", sa.Float, nullable=False),
    sa.Column("next_run_time", Millis, nullable=True),
    sa.Column("worker_id", _s(128), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", Millis, nullable=True),
    sa.Column("heartbeat_at", Millis, nullable=True),
    sa.Column("current_stage_name", _s(255), nullable=True),
    sa.Column("progress_text", sa.Text, nullable=True),
    sa.Column("progress_percent", sa.Float, nullable=True),
    sa.Column("last_event_type", _s(64), nullable=True),
    sa.Column("last_event_time", Millis, nullable=True),
    sa.Column("created_at", Millis, nullable=False),
    sa.Column("updated_at", Millis, nullable=False),
    # a step of a flow or chain (flowd_flows.id) and its index there
    sa.Column("flow_id", sa.BigInteger, nullable=True),
    sa.Column("flow_step", sa.Integer, nullable=True),
    # the task has constraint keys (flowd_task_constraints): the claim checks them
    sa.Column("constrained", sa.Boolean, nullable=False, server_default=sa.false()),
    # the domain object the task is about (flowd_entities keeps its projection)
    sa.Column("entity_type", _s(64), nullable=True),
    sa.Column("entity_id", _s(255), nullable=True),
    # attempts in a row interrupted by the death of their worker (max_recoveries ends the run)
    sa.Column("recoveries", sa.Integer, nullable=False, server_default="0"),
    # retry backoff: "fixed" (retry_interval each time) or "exponential" (doubling, capped
    # by retry_max_interval); retry_jitter draws each wait from [w/2, w]
    sa.Column("retry_backoff", _s(16), nullable=False, server_default="fixed"),
    sa.Column("retry_max_interval", sa.Float, nullable=False, server_default="3600"),
    sa.Column("retry_jitter", sa.Boolean, nullable=False, server_default=sa.false()),
    # the plugin version (content hash) of the running attempt: the attempt row, written
    # once when the attempt ends, takes it (with worker_id, attempt, stage and started_at)
    sa.Column("handler_version", _s(64), nullable=True),
    sa.Index("ix_flowd_tasks_parent", "parent_id", "parent_stage", **partial("parent_id IS NOT NULL")),
    sa.Index("ix_flowd_tasks_root", "root_id"),
    # the running tasks of a worker (recovery, the registry's counts)
    sa.Index("ix_flowd_tasks_worker", "worker_id", "status", **partial(f"status = {RUNNING_SQL}")),
    sa.Index("ix_flowd_tasks_name_status", "name", "status"),
    sa.Index("ix_flowd_tasks_tag", "tag", **partial("tag IS NOT NULL")),
    sa.Index("ix_flowd_tasks_key", "key", **partial("key IS NOT NULL")),
    sa.Index("ix_flowd_tasks_status_updated", "status", "updated_at"),
    sa.Index("ix_flowd_tasks_flow", "flow_id", "flow_step", **partial("flow_id IS NOT NULL")),
    # "is any constrained task pending?": the claim takes its plain path when none is
    sa.Index("ix_flowd_tasks_constrained", "constrained", "status", **partial(CONSTRAINED_SQL)),
    sqlite_autoincrement=True,
)

# the claim's ORDER BY after the status prefix: a claim reads the first due pending rows
# in index order and stops at its LIMIT (no sort of the backlog, no history)
sa.Index(
    "ix_flowd_tasks_claim",
    tasks.c.status,
    tasks.c.priority.desc(),
    tasks.c.next_run_time,
    tasks.c.id,
    **partial(f"status = {PENDING_SQL}"),
)

events = sa.Table(
    "flowd_task_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.BigInteger, nullable=False),
    sa.Column("root_id", sa.BigInteger, nullable=True),
    sa.Column("parent_id", sa.BigInteger, nullable=True),
    sa.Column("event_type", _s(64), nullable=False),
    sa.Column("worker_id", _s(128), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("stage", sa.Integer, nullable=True),
    sa.Column("from_status", _s(32), nullable=True),
    sa.Column("to_status", _s(32), nullable=True),
    sa.Column("message", LongText, nullable=True),
    sa.Column("metadata", JsonText, nullable=True),
    sa.Column("created_at", Millis, nullable=False),
    sa.Index("ix_flowd_events_task", "task_id", "id"),
    sa.Index("ix_flowd_events_root", "root_id", "id"),
    sa.Index("ix_flowd_events_created", "created_at"),
    sqlite_autoincrement=True,
)

attempts = sa.Table(
    "flowd_task_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker_id", _s(128), nullable=True),
    sa.Column("started_at", Millis, nullable=False),
    sa.Column("ended_at", Millis, nullable=True),
    sa.Column("outcome", _s(32), nullable=True),
    sa.Column("error", LongText, nullable=True),
    # the plugin version (content hash) the attempt ran: which code produced this outcome
    sa.Column("handler_version", _s(64), nullable=True),
    sa.UniqueConstraint("task_id", "attempt", name="uq_flowd_attempts_task_attempt"),
    sa.Index("ix_flowd_attempts_worker", "worker_id", "ended_at"),
    sqlite_autoincrement=True,
)

workers = sa.Table(
    "flowd_workers",
    metadata,
    sa.Column("worker_id", _s(128), primary_key=True),
    sa.Column("pod_id", _s(128), nullable=True),
    sa.Column("status", _s(16), nullable=False),
    sa.Column("host", _s(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("registered_at", Millis, nullable=False),
    sa.Column("last_seen_at", Millis, nullable=False),
    sa.Column("expires_at", Millis, nullable=False),
    sa.Column("handlers", JsonText, nullable=True),
    sa.Index("ix_flowd_workers_pod", "pod_id", "status"),
    sa.Index("ix_flowd_workers_status_expires", "status", "expires_at"),
)

handlers = sa.Table(
    "flowd_handlers",
    metadata,
    # the fleet-wide handler registry: what each live worker serves, with the options the CLI
    # applies at submit; a row lives until expires_at unless its worker renews it
    sa.Column("worker_id", _s(128), primary_key=True),
    sa.Column("name", _s(128), primary_key=True),
    sa.Column("options", JsonText, nullable=True),
    sa.Column("version", _s(64), nullable=True),
    sa.Column("source", _s(255), nullable=True),
    sa.Column("published_at", Millis, nullable=False),
    sa.Column("expires_at", Millis, nullable=False),
    sa.Index("ix_flowd_handlers_name_expires", "name", "expires_at"),
)

leases = sa.Table(
    "flowd_leases",
    metadata,
    # fleet-wide singleton jobs (automatic retention): one holder at a time
    sa.Column("name", _s(64), primary_key=True),
    sa.Column("holder", _s(128), nullable=False),
    sa.Column("expires_at", Millis, nullable=False),
)

flows = sa.Table(
    "flowd_flows",
    metadata,
    # a fan-out/fan-in flow (steps in parallel, then one join task) or a chain (one after another)
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", _s(16), nullable=False),
    sa.Column("name", _s(128), nullable=True),
    # running -> joined (flow: the join task exists) | completed | failed (chain)
    sa.Column("status", _s(16), nullable=False),
    sa.Column("failure_policy", _s(16), nullable=False),
    sa.Column("deadline", Millis, nullable=True),
    sa.Column("step_count", sa.Integer, nullable=False),
    # resolved definitions of the join and of a chain's steps (created when their turn comes)
    sa.Column("spec", JsonText, nullable=False),
    sa.Column("join_task_id", sa.BigInteger, nullable=True),
    sa.Column("aborted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("timed_out", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("result", JsonText, nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("starter_id", sa.BigInteger, nullable=True),
    sa.Column("entity_type", _s(64), nullable=True),
    sa.Column("entity_id", _s(255), nullable=True),
    sa.Column("created_at", Millis, nullable=False),
    sa.Column("updated_at", Millis, nullable=False),
    sa.Column("finished_at", Millis, nullable=True),
    # the deadline sweep: running flows by deadline
    sa.Index("ix_flowd_flows_status_deadline", "status", "deadline"),
    sqlite_autoincrement=True,
)

constraint_keys = sa.Table(
    "flowd_constraint_keys",
    metadata,
    # one row per (group, key) in use: the lock a claim takes before counting the key's
    # running tasks, and when the key is free again after its last run's cooldown
    sa.Column("ref", _s(400), primary_key=True),
    sa.Column("grp", _s(128), nullable=False),
    sa.Column("key", _s(255), nullable=False),
    sa.Column("max_concurrent", sa.Integer, nullable=False),
    sa.Column("cooldown", sa.Float, nullable=False),
    sa.Column("available_at", Millis, nullable=True),
    sa.Column("updated_at", Millis, nullable=False),
)

task_constraints = sa.Table(
    "flowd_task_constraints",
    metadata,
    # the keys of each constrained task, rendered at submit time
    sa.Column("task_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ref", _s(400), primary_key=True),
    # per-key FIFO and running counts: the tasks of one key in submission order
    sa.Index("ix_flowd_task_constraints_ref", "ref", "task_id"),
)

entities = sa.Table(
    "flowd_entities",
    metadata,
    # the projection "what is happening to this object": one row per (entity, task), written
    # in the transaction of each of the task's transitions
    sa.Column("entity_type", _s(64), primary_key=True),
    sa.Column("entity_id", _s(255), primary_key=True),
    sa.Column("task_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", _s(128), nullable=False),
    # scheduled -> processing -> executed | failed (paused while paused)
    sa.Column("status", _s(16), nullable=False),
    sa.Column("result", JsonText, nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("created_at", Millis, nullable=False),
    sa.Column("updated_at", Millis, nullable=False),
    sa.Column("started_at", Millis, nullable=True),
    sa.Column("ended_at", Millis, nullable=True),
    sa.Index("ix_flowd_entities_task", "task_id"),
)

entity_flows = sa.Table(
    "flowd_entity_flows",
    metadata,
    # a flow or chain bound to an entity projects one row, keyed by the flow (not one per
    # step and join): scheduled -> processing (a step claimed) -> executed | failed (the
    # join's outcome; a chain's last step, or the step that stopped it)
    sa.Column("flow_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entity_type", _s(64), nullable=False),
    sa.Column("entity_id", _s(255), nullable=False),
    sa.Column("kind", _s(16), nullable=False),
    sa.Column("name", _s(128), nullable=False),
    sa.Column("status", _s(16), nullable=False),
    sa.Column("join_task_id", sa.BigInteger, nullable=True),
    sa.Column("result", JsonText, nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("created_at", Millis, nullable=False),
    sa.Column("updated_at", Millis, nullable=False),
    sa.Column("started_at", Millis, nullable=True),
    sa.Column("ended_at", Millis, nullable=True),
    sa.Index("ix_flowd_entity_flows_entity", "entity_type", "entity_id", "flow_id"),
    sa.Index("ix_flowd_entity_flows_join", "join_task_id"),
)
