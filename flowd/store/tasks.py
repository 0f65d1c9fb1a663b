"""Task verbs: insert, read, claim, apply a transition (fenced), query, delete."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowd.clock import from_ms, iso, to_ms
from flowd.model import (
    FINISHED_STATUSES,
    EventType,
    NewTask,
    Page,
    TaskId,
    TaskKey,
    TaskNode,
    TaskRecord,
    TaskStatus,
    TaskType,
    WorkerStatus,
)
from flowd.rules.options import payload_json
from flowd.rules.transitions import EventSpec, Transition
from flowd.store import bulk, constraints, entities, paging, wakeup
from flowd.store.attempts import close_attempt, close_attempts, close_row
from flowd.store.events import event_rows, insert_event_rows, insert_events
from flowd.store.schema import JsonText, Millis, is_pending, is_running
from flowd.store.schema import events as E
from flowd.store.schema import tasks as T
from flowd.store.schema import workers as W

_COLUMNS = [c.name for c in T.columns]

# The claim reads its rows back as stored (integer milliseconds, JSON text) and decodes
# them in `_claimed_record` by position: SQLAlchemy's per-row result processing and
# by-name look-ups cost more than the claim's own SQL on SQLite.
_MILLIS = frozenset(c.name for c in T.columns if isinstance(c.type, Millis))
_JSON = frozenset(c.name for c in T.columns if isinstance(c.type, JsonText))
_RAW_COLUMNS = [
    sa.type_coerce(c, sa.BigInteger).label(c.name)
    if c.name in _MILLIS
    else sa.type_coerce(c, sa.Text).label(c.name)
    if c.name in _JSON
    else c
    for c in T.columns
]


@functools.lru_cache(maxsize=1024)
def _ms(v: Any) -> datetime:
    # datetimes are immutable; a claim's rows share most of their timestamps
    return from_ms(int(v))


_DECODE: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
    (i, _ms if name in _MILLIS else json.loads) for i, name in enumerate(_COLUMNS) if name in _MILLIS | _JSON
)
_INTS = tuple(
    _COLUMNS.index(n) for n in ("id", "priority", "stage", "retry_count", "max_retries", "attempt", "recoveries")
)
_OPTIONAL_INTS = tuple(_COLUMNS.index(n) for n in ("parent_id", "root_id", "flow_id"))
_FLOATS = tuple(_COLUMNS.index(n) for n in ("retry_interval", "timeout", "retry_max_interval"))
_BOOLS = tuple(_COLUMNS.index(n) for n in ("constrained", "retry_jitter"))
_I = {name: _COLUMNS.index(name) for name in ("type", "status", "payload", "labels", "context")}


def _claimed_record(row: Sequence[Any]) -> TaskRecord:
    """A row of `_RAW_COLUMNS` → its record: the stored values decoded by position."""
    v = list(row)
    for i, decode in _DECODE:
        if v[i] is not None:
            v[i] = decode(v[i])
    return _record(v)


def to_record(row: Any) -> TaskRecord:
    """A row with the task columns by name, already decoded by their column types."""
    m = row._mapping
    return _record([m[name] for name in _COLUMNS])


def _record(v: list[Any]) -> TaskRecord:
    """Decoded column values in `_COLUMNS` order → the record. TaskRecord's fields are the
    table's columns in the same order (a test checks it)."""
    for i in _INTS:
        v[i] = int(v[i])
    for i in _OPTIONAL_INTS:
        if v[i] is not None:
            v[i] = int(v[i])
    for i in _FLOATS:
        v[i] = float(v[i])
    at = _I
    v[at["type"]] = TaskType(v[at["type"]])
    v[at["status"]] = TaskStatus(v[at["status"]])
    if v[at["payload"]] is None:
        v[at["payload"]] = {}
    v[at["labels"]] = v[at["labels"]] or {}
    if v[at["context"]] is not None:
        v[at["context"]] = bytes(v[at["context"]])
    for i in _BOOLS:
        v[i] = bool(v[i])
    return TaskRecord(*v)


def _template_values(new: NewTask, now: datetime) -> dict[str, Any]:
    """The columns a task made from template `new` shares with the template's other tasks."""
    return {
        "name": new.name,
        "type": new.type.value,
        "status": TaskStatus.PENDING.value,
        "priority": new.priority,
        "tag": new.tag,
        "labels": dict(new.labels) or None,
        "cron_expr": new.cron_expr,
        "cron_tz": new.cron_tz,
        "key": new.key,
        "stage": 0,
        "parent_id": new.parent_id,
        "parent_stage": new.parent_stage,
        "flow_id": new.flow_id,
        "flow_step": new.flow_step,
        "entity_type": new.entity[0] if new.entity else None,
        "entity_id": new.entity[1] if new.entity else None,
        "retry_count": 0,
        "max_retries": new.max_retries,
        "retry_interval": new.retry_interval,
        "retry_backoff": new.retry_backoff,
        "retry_max_interval": new.retry_max_interval,
        "retry_jitter": new.retry_jitter,
        "timeout": new.timeout,
        "next_run_time": new.next_run_time or now,
        "attempt": 0,
        "last_event_type": "task_created",
        "last_event_time": now,
        "created_at": now,
        "updated_at": now,
    }


def _created_event(new: NewTask, now: datetime) -> dict[str, Any]:
    """The `task_created` event of a task made from template `new`, but its task and root ids."""
    meta: dict[str, Any] = {"type": new.type.value, "priority": new.priority}
    if new.cron_expr:
        meta["cron_expr"] = new.cron_expr
    if new.parent_id is not None:
        meta["parent_stage"] = new.parent_stage
    if new.flow_id is not None:
        meta["flow_id"] = new.flow_id
        meta["flow_step"] = new.flow_step
    return {
        "parent_id": new.parent_id,
        "event_type": "task_created",
        "worker_id": None,
        "attempt": 0,
        "stage": 0,
        "from_status": None,
        "to_status": TaskStatus.PENDING.value,
        "message": f"{new.type.value} task {new.name} created",
        "metadata": meta,
        "created_at": now,
    }


def _reserve_ids(conn: sa.Connection, n: int) -> list[TaskId] | None:
    """`n` new task ids known before the INSERT, or None where the database cannot promise them.

    Knowing the ids up front lets a bulk insert set root_id and write the events without
    reading anything back or updating a row twice. SQLite: the write transaction holds the
    file lock (BEGIN IMMEDIATE); new ids start past the highest ever handed out (the
    AUTOINCREMENT table's sqlite_sequence entry, which the INSERT then raises), not past
    today's max(id), so the ids of deleted tasks are never given again.
    PostgreSQL: the id sequence hands out `n` values in one statement.
    """
    if conn.dialect.name == "sqlite":
        first = int(conn.execute(_LAST_ID).scalar_one()) + 1
        return [TaskId(i) for i in range(first, first + n)]
    if conn.dialect.name == "postgresql":
        return [TaskId(int(r[0])) for r in conn.execute(_NEXT_IDS, {"n": n})]
    return None


# built once: SQLAlchemy then goes straight to its compiled-statement cache
_LAST_ID = sa.text(
    f"SELECT max(coalesce((SELECT max(id) FROM {T.name}), 0),"
    f" coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{T.name}'), 0))"
)
_NEXT_IDS = sa.text(f"SELECT nextval(pg_get_serial_sequence('{T.name}', 'id')) FROM generate_series(1, :n)")

# an inserted task row: the columns of its own first, then its template's (in dict order)
_OWN_KEYS = ("id", "root_id", "payload", "constrained")
_TASK_KEYS = _OWN_KEYS + tuple(_template_values(NewTask(name="x", payload={}), from_ms(0)))
_EVENT_KEYS = ("task_id", "root_id", *_created_event(NewTask(name="x", payload={}), from_ms(0)))

# (template, payload JSON text, constraint keys): one task made from a template whose own
# payload and constraints it replaces
Copy = tuple[NewTask, str, tuple[TaskKey, ...]]


def insert_tasks(conn: sa.Connection, news: Sequence[NewTask], now: datetime) -> list[TaskId]:
    """Insert tasks with their `task_created` events; a root task's root_id is its own id."""
    return insert_copies(conn, [(new, payload_json(new.payload), new.constraints) for new in news], now)


def insert_copies(conn: sa.Connection, copies: Sequence[Copy], now: datetime) -> list[TaskId]:
    """Insert the tasks `copies` describe, in order, with their `task_created` events.

    Bulk by design: what the tasks of one template share (every column but the id, the
    payload and the constraint flag, and the event but its ids) is converted to the
    driver's form once per template, so a task costs a tuple. SQLite and PostgreSQL: ids
    reserved up front, then one executemany INSERT (COPY on PostgreSQL) of the tasks with
    root_id already set and one of the events. MySQL/MariaDB: the ids come back from the
    INSERT and the roots' root_id is set by one UPDATE per thousand.
    """
    if not copies:
        return []
    flag = bulk.processor(conn, T, "constrained") or bool
    own_flag = (flag(False), flag(True))
    templates = {id(tpl): tpl for tpl, _, _ in copies}
    shared: dict[int, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}  # id(template) → its task and event values
    for key, tpl in templates.items():
        task = bulk.to_driver(conn, T, _template_values(tpl, now))
        event = bulk.to_driver(conn, E, _created_event(tpl, now))
        shared[key] = (tuple(task.values()), tuple(event.values()))

    def task_row(tid: TaskId | None, tpl: NewTask, payload: str, keys: tuple[TaskKey, ...]) -> tuple[Any, ...]:
        return (tid, _root_of(tpl, tid), payload, own_flag[bool(keys)], *shared[id(tpl)][0])

    ids = _reserve_ids(conn, len(copies))
    if ids is not None:
        rows = [task_row(tid, *copy) for tid, copy in zip(ids, copies, strict=True)]
        bulk.insert_values(conn, T, _TASK_KEYS, rows)
    else:
        # no id yet: the roots' root_id stays NULL until the UPDATE below
        rows = [task_row(None, *copy)[1:] for copy in copies]
        ids = [TaskId(i) for i in bulk.insert_values_returning_ids(conn, T, _TASK_KEYS[1:], rows)]
        roots = [tid for tid, (tpl, _, _) in zip(ids, copies, strict=True) if tpl.root_id is None]
        for i in range(0, len(roots), 1000):
            conn.execute(sa.update(T).where(T.c.id.in_(roots[i : i + 1000])).values(root_id=T.c.id))
    events = []
    for tid, (tpl, _, keys) in zip(ids, copies, strict=True):
        if keys:
            constraints.register(conn, tid, keys, now)
        if tpl.entity is not None:
            entities.created(conn, tid, tpl, now)
        events.append((tid, _root_of(tpl, tid), *shared[id(tpl)][1]))
    bulk.insert_values(conn, E, _EVENT_KEYS, events)
    if any(tpl.next_run_time is None or tpl.next_run_time <= now for tpl in templates.values()):
        wakeup.notify(conn, len(ids))
    return ids


def _root_of(tpl: NewTask, tid: TaskId | None) -> TaskId | None:
    """A task's root: its template's, or the task itself for a root task."""
    return tpl.root_id if tpl.root_id is not None else tid


def get(conn: sa.Connection, task_id: int, *, for_update: bool = False) -> TaskRecord | None:
    q = sa.select(T).where(T.c.id == task_id)
    if for_update and conn.dialect.name != "sqlite":
        q = q.with_for_update()
    row = conn.execute(q).first()
    return to_record(row) if row is not None else None


def get_many(conn: sa.Connection, ids: Iterable[int]) -> list[TaskRecord]:
    ids = list(ids)
    if not ids:
        return []
    rows = conn.execute(sa.select(T).where(T.c.id.in_(ids)).order_by(T.c.id)).all()
    return [to_record(r) for r in rows]


# the statuses `TaskManager.wait()` returns on: an async task is over
ENDED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.PERMANENTLY_FAILED})


def ended_among(conn: sa.Connection, ids: Iterable[int]) -> list[TaskId]:
    """Which of `ids` are completed or permanently failed (primary-key look-ups)."""
    ids = list(ids)
    if not ids:
        return []
    q = sa.select(T.c.id).where(T.c.id.in_(ids), T.c.status.in_([s.value for s in ENDED_STATUSES]))
    return [TaskId(int(i)) for i in conn.execute(q).scalars()]


def find_active_by_key(conn: sa.Connection, key: str, type_: TaskType | None = None) -> TaskRecord | None:
    """The newest task with `key` that is not finished (for idempotent submit and cron)."""
    q = sa.select(T).where(T.c.key == key, T.c.status.notin_([s.value for s in FINISHED_STATUSES]))
    if type_ is not None:
        q = q.where(T.c.type == type_.value)
    row = conn.execute(q.order_by(T.c.id.desc()).limit(1)).first()
    return to_record(row) if row is not None else None


def active_by_keys(conn: sa.Connection, keys: Sequence[str], type_: TaskType) -> dict[str, TaskRecord]:
    """Key → the newest unfinished task of that type with the key (for schedules declared in code)."""
    if not keys:
        return {}
    q = sa.select(T).where(
        T.c.key.in_(list(keys)), T.c.type == type_.value, T.c.status.notin_([s.value for s in FINISHED_STATUSES])
    )
    out: dict[str, TaskRecord] = {}
    for row in conn.execute(q.order_by(T.c.id)).all():
        t = to_record(row)
        assert t.key is not None
        out[t.key] = t  # ascending ids: the newest wins
    return out


def find_by_key(conn: sa.Connection, key: str, type_: TaskType) -> TaskRecord | None:
    """The newest task with `key`, finished or not (`submit(..., once=True)`)."""
    q = sa.select(T).where(T.c.key == key, T.c.type == type_.value)
    row = conn.execute(q.order_by(T.c.id.desc()).limit(1)).first()
    return to_record(row) if row is not None else None


def find_pending_by_key(conn: sa.Connection, key: str) -> TaskRecord | None:
    """The newest pending async task with `key` (the one a debounced submission replaces)."""
    q = sa.select(T).where(T.c.key == key, T.c.status == TaskStatus.PENDING.value, T.c.type == TaskType.ASYNC.value)
    row = conn.execute(q.order_by(T.c.id.desc()).limit(1)).first()
    return to_record(row) if row is not None else None


def debounce(conn: sa.Connection, task: TaskRecord, new: NewTask, now: datetime) -> bool:
    """Replace a pending task's payload (and keys) and push its start; False if it left pending."""
    res = conn.execute(
        sa.update(T)
        .where(T.c.id == task.id, T.c.status == TaskStatus.PENDING.value)
        .values(
            payload=new.payload,
            next_run_time=new.next_run_time or now,
            constrained=bool(new.constraints),
            updated_at=now,
            last_event_type=EventType.TASK_UPDATED.value,
            last_event_time=now,
        )
    )
    if (res.rowcount or 0) != 1:
        return False
    constraints.delete_for(conn, [task.id])
    if new.constraints:
        constraints.register(conn, task.id, new.constraints, now)
    nxt = iso(new.next_run_time or now)
    spec = EventSpec(
        EventType.TASK_UPDATED,
        TaskStatus.PENDING,
        TaskStatus.PENDING,
        f"debounced: payload replaced, start pushed to {nxt}",
        {"debounced": True, "next_run_time": nxt},
    )
    insert_events(conn, task, (spec,), now, worker_id=None, attempt=task.attempt, stage=task.stage)
    return True


def update_fields(conn: sa.Connection, task_id: int, values: Mapping[str, Any], now: datetime) -> int:
    """Overwrite plain fields of a task that is not running (re-registering a keyed cron)."""
    res = conn.execute(
        sa.update(T).where(T.c.id == task_id, T.c.status != TaskStatus.RUNNING.value).values(**values, updated_at=now)
    )
    return int(res.rowcount or 0)


@dataclass(frozen=True, slots=True)
class Fence:
    """The owner of a running attempt; fenced writes match only while it still owns it."""

    worker_id: str
    attempt: int


def _fenced(q: Any, fence: Fence | None) -> Any:
    if fence is None:
        return q
    return q.where(
        T.c.status == TaskStatus.RUNNING.value, T.c.worker_id == fence.worker_id, T.c.attempt == fence.attempt
    )


def apply_transition(
    conn: sa.Connection,
    task: TaskRecord,
    tr: Transition,
    now: datetime,
    *,
    fence: Fence | None = None,
    actor: str | None = None,
) -> bool:
    """Apply `tr` to `task` in the caller's transaction; False when the row no longer matches.

    The UPDATE is conditional on the expected status (and stage, for resumes) and, when
    `fence` is given, on worker id and attempt number — a stale writer changes nothing.
    The task row, its events and the attempt row change together or not at all.
    """
    last = tr.events[-1] if tr.events else None
    values: dict[str, Any] = {**tr.values, "status": tr.to_status.value, "updated_at": now}
    if last is not None:
        values["last_event_type"] = last.type.value
        values["last_event_time"] = now
    q = sa.update(T).where(T.c.id == task.id, T.c.status.in_([s.value for s in tr.expected]))
    if "stage" in tr.extra:
        q = q.where(T.c.stage == tr.extra["stage"])
    q = _fenced(q, fence)
    res = conn.execute(q.values(**values))
    if (res.rowcount or 0) != 1:
        return False
    if tr.to_status is TaskStatus.PENDING and task.status is not TaskStatus.RUNNING:
        wakeup.notify(conn)  # a resume: due now for any idle worker
    elif tr.to_status in ENDED_STATUSES:
        wakeup.notify_ended(conn)  # for callers waiting on this task
    stage = values.get("stage", task.stage)
    who = task.worker_id if actor is None else (actor or None)
    insert_events(conn, task, tr.events, now, worker_id=who, attempt=task.attempt, stage=stage)
    if tr.close_attempt is not None:
        close_attempt(conn, task, tr.close_attempt, tr.attempt_error, now)
    if task.constrained and task.status is TaskStatus.RUNNING:
        constraints.release(conn, task.id, now)  # the run ended: its keys' slots and cooldown
    if task.entity_type is not None:
        entities.transitioned(conn, task, tr, now)
    return True


def batchable(tr: Transition) -> bool:
    """Whether `apply_fenced_batch` can apply `tr`: a fenced end of a running attempt."""
    return tr.fenced and tr.expected == {TaskStatus.RUNNING} and "stage" not in tr.extra


# the fence's row keys → the columns they match; prefixed so they never clash with a column set
_FENCE_KEYS = {"f_id": "id", "f_worker": "worker_id", "f_attempt": "attempt"}


def apply_fenced_batch(
    conn: sa.Connection, items: Sequence[tuple[TaskRecord, Transition, Fence]], now: datetime
) -> bool:
    """Apply many `batchable` transitions with a few executemany statements, in the caller's transaction.

    The same writes as `apply_transition` for each item (task row, events, attempt close,
    fenced the same way). False when any row no longer matched its fence: some rows may
    have changed, so the caller must roll back and apply them one by one.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    events: list[dict[str, Any]] = []
    closes: list[dict[str, Any]] = []
    for task, tr, fence in items:
        assert batchable(tr), "apply_fenced_batch: not a fenced end of a running attempt"
        values: dict[str, Any] = {**tr.values, "status": tr.to_status.value, "updated_at": now}
        if tr.events:
            values["last_event_type"] = tr.events[-1].type.value
            values["last_event_time"] = now
        row = {**values, "f_id": task.id, "f_worker": fence.worker_id, "f_attempt": fence.attempt}
        groups.setdefault(tuple(sorted(values)), []).append(row)
        stage = values.get("stage", task.stage)
        events += event_rows(task, tr.events, worker_id=task.worker_id, attempt=task.attempt, stage=stage)
        if tr.close_attempt is not None:
            closes.append(close_row(task, tr.close_attempt, tr.attempt_error, now))
    for rows in groups.values():
        if bulk.update(conn, T, rows, match=_FENCE_KEYS, equal={"status": TaskStatus.RUNNING.value}) != len(rows):
            return False
    insert_event_rows(conn, events, now)
    close_attempts(conn, closes)
    if any(tr.to_status in ENDED_STATUSES for _t, tr, _f in items):
        wakeup.notify_ended(conn)  # one for the batch: waiters re-read their tasks
    return True


def record_fenced_event(
    conn: sa.Connection,
    task: TaskRecord,
    fence: Fence,
    event: EventSpec,
    values: Mapping[str, Any],
    now: datetime,
) -> bool:
    """A checkpoint or progress event of a running attempt (fenced); updates `values` too."""
    q = _fenced(sa.update(T).where(T.c.id == task.id), fence).values(
        **values, updated_at=now, last_event_type=event.type.value, last_event_time=now
    )
    if (conn.execute(q).rowcount or 0) != 1:
        return False
    insert_events(conn, task, (event,), now, worker_id=fence.worker_id, attempt=fence.attempt, stage=task.stage)
    return True


def claim_due(
    conn: sa.Connection,
    worker_id: str,
    limits: Mapping[str, int],
    slots: int,
    now: datetime,
    aging: float | None = None,
    versions: Mapping[str, str | None] | None = None,
) -> list[TaskRecord]:
    """Claim up to `slots` due pending tasks among `limits` (name → free per-type slots).

    The claimed rows take this worker's handler `versions` (name → plugin version): the
    running attempt lives on the task row until its attempt row is written at its end.

    With `aging` (seconds), a task's priority counts one step higher for every `aging`
    seconds it has been due, so old low-priority work is not starved by a stream of new
    high-priority tasks (that order cannot use the claim index: the due rows are sorted).

    Order: priority desc, next_run_time, id. SQLite runs this under BEGIN IMMEDIATE (the
    whole file is ours until commit); PostgreSQL and MySQL lock the chosen rows with
    FOR UPDATE SKIP LOCKED so concurrent workers take disjoint sets.
    """
    names = [n for n, free in limits.items() if free > 0]
    if slots <= 0 or not names:
        return []
    aging_ms = int(aging * 1000) if aging else None
    known = tuple(sorted((n, v) for n, v in (versions or {}).items() if v is not None))
    q, claim = _claim_statements(aging_ms, conn.dialect.name != "sqlite", known)
    params: dict[str, Any] = {"c_now": now, "c_worker": worker_id, "c_names": names, "c_n": slots}
    if aging_ms:
        params["c_now_ms"] = to_ms(now)
    if conn.dialect.name == "postgresql" and not aging_ms:
        # The claim index gives the claim's order. Without statistics that know the backlog
        # (a fresh table, a burst of submits before autoanalyze) the planner may read the
        # (name, status) index and sort every pending task instead: a claim would then cost
        # O(backlog), 15 ms for 60,000 pending. Sorting off for this transaction rules that out.
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
    # constraint groups: skip tasks whose keys are busy, cooling down or not at their FIFO head
    constrained = constraints.any_pending(conn)
    uncapped = all(limits[n] >= slots for n in names)
    if uncapped and not constrained and conn.dialect.update_returning:
        # one round trip: no per-name cap can refuse a candidate, so lock, flip and read
        # the rows in a single UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING
        res = conn.execute(_claim_returning(aging_ms, conn.dialect.name != "sqlite", known), params)
        claimed = [_claimed_record(r) for r in res.all()]
    else:
        if constrained:
            q = q.where(constraints.eligible(constraints.blocked_refs(conn, now))).add_columns(T.c.constrained)
        widen = 4 if constrained else 2 if len(names) > 1 else 1
        candidates = conn.execute(q.limit(slots * widen), params).all()
        chosen = _choose(conn, candidates, limits, slots, constrained, now)
        if not chosen:
            return []
        conn.execute(claim.where(T.c.id.in_(chosen), T.c.status == TaskStatus.PENDING.value), params)
        rows = conn.execute(
            sa.select(T).where(T.c.id.in_(chosen), T.c.worker_id == worker_id, T.c.status == TaskStatus.RUNNING.value)
        ).all()
        claimed = [to_record(r) for r in rows]
    entities.claimed(conn, claimed, now)
    claimed.sort(key=lambda t: (-t.priority, t.next_run_time or now, t.id))
    return claimed


@functools.lru_cache(maxsize=64)
def _claim_statements(
    aging_ms: int | None, skip_locked: bool, versions: tuple[tuple[str, str], ...] = ()
) -> tuple[sa.Select[Any], sa.Update]:
    """The claim's candidate query and its UPDATE, built once: what changes from claim to
    claim is bound at execution (`c_now`, `c_worker`, `c_names`, `c_n`, `c_now_ms`), so a
    claim does not rebuild the expressions nor SQLAlchemy their cache key."""
    now = sa.bindparam("c_now", type_=Millis())
    # walks ix_flowd_tasks_claim in order: status prefix, then the ORDER BY columns
    q = (
        sa.select(T.c.id, T.c.name)
        .where(
            is_pending(T.c.status),
            T.c.next_run_time <= now,
            T.c.name.in_(sa.bindparam("c_names", expanding=True)),
        )
        .order_by(T.c.priority.desc(), T.c.next_run_time, T.c.id)
    )
    if aging_ms:
        # whole steps of waiting: integer division of milliseconds on every database
        now_ms = sa.bindparam("c_now_ms", type_=sa.BigInteger())
        waited = (now_ms - sa.type_coerce(T.c.next_run_time, sa.BigInteger)) // aging_ms
        q = q.order_by(None).order_by((T.c.priority + waited).desc(), T.c.next_run_time, T.c.id)
    if skip_locked:
        q = q.with_for_update(skip_locked=True)
    # the handler version of each name, as a CASE built once per set of versions (they
    # change only when the plugins are reloaded)
    version: Any = sa.case(dict(versions), value=T.c.name, else_=sa.null()) if versions else sa.null()
    claim = sa.update(T).values(
        handler_version=version,
        status=TaskStatus.RUNNING.value,
        worker_id=sa.bindparam("c_worker", type_=T.c.worker_id.type),
        attempt=T.c.attempt + 1,
        started_at=now,
        heartbeat_at=now,
        updated_at=now,
        # the last event a claim writes: task_retry_started on a retry, else task_started
        last_event_type=sa.case((T.c.retry_count > 0, "task_retry_started"), else_="task_started"),
        last_event_time=now,
    )
    return q, claim


@functools.lru_cache(maxsize=64)
def _claim_returning(aging_ms: int | None, skip_locked: bool, versions: tuple[tuple[str, str], ...] = ()) -> sa.Update:
    q, claim = _claim_statements(aging_ms, skip_locked, versions)
    chosen = q.with_only_columns(T.c.id).limit(sa.bindparam("c_n", type_=sa.Integer())).scalar_subquery()
    # no status test outside the subquery: the subquery's rows are ours (SQLite holds the
    # write lock, the servers the row locks), and an extra `status =` would make SQLite
    # pick the claim index over the primary key for the outer UPDATE
    return claim.where(T.c.id.in_(chosen)).returning(*_RAW_COLUMNS)


def _choose(
    conn: sa.Connection, rows: Sequence[Any], limits: Mapping[str, int], slots: int, constrained: bool, now: datetime
) -> list[int]:
    """Pick candidates in order within the per-name limits and, for constrained ones, their keys.

    A constrained candidate needs every one of its keys locked by this claim, not cooling
    down, with a free slot left (after the candidates already picked), and — for a key of
    max_concurrent 1 — to be the oldest pending task of that key (per-key FIFO).
    """
    refs_of = constraints.keys_of(conn, [int(r[0]) for r in rows if constrained and r[2]])
    keys = constraints.lock_free(conn, [ref for refs in refs_of.values() for ref in refs], now)
    free_names = dict(limits)
    free_keys = {ref: k[0] for ref, k in keys.items()}
    chosen: list[int] = []
    for row in rows:
        tid, name = int(row[0]), row[1]
        if len(chosen) >= slots:
            break
        if free_names.get(name, 0) <= 0:
            continue
        refs = refs_of.get(tid, [])
        if any(r not in keys or free_keys[r] <= 0 or (keys[r][2] == 1 and keys[r][1] != tid) for r in refs):
            continue
        for r in refs:
            free_keys[r] -= 1
        free_names[name] -= 1
        chosen.append(tid)
    return chosen


def heartbeat(conn: sa.Connection, worker_id: str, attempts: Sequence[tuple[int, int]], now: datetime) -> int:
    """Refresh the heartbeat of these running (task id, attempt) pairs, while this worker owns them.

    Fenced per attempt, not only per worker: a worker that lost a task and claimed it again
    (a new attempt) must not keep the old attempt alive.
    """
    if not attempts:
        return 0
    res = conn.execute(
        sa.update(T)
        .where(
            sa.tuple_(T.c.id, T.c.attempt).in_([(int(t), int(a)) for t, a in attempts]),
            T.c.worker_id == worker_id,
            T.c.status == TaskStatus.RUNNING.value,
        )
        .values(heartbeat_at=now)
    )
    return int(res.rowcount or 0)


def stalled(conn: sa.Connection, heartbeat_before: datetime, limit: int = 100) -> list[TaskRecord]:
    """Running tasks whose heartbeat is older than `heartbeat_before`."""
    rows = conn.execute(
        sa.select(T).where(is_running(T.c.status), T.c.heartbeat_at < heartbeat_before).order_by(T.c.id).limit(limit)
    ).all()
    return [to_record(r) for r in rows]


def running_of_workers(conn: sa.Connection, worker_ids: Sequence[str]) -> list[TaskRecord]:
    if not worker_ids:
        return []
    rows = conn.execute(sa.select(T).where(is_running(T.c.status), T.c.worker_id.in_(list(worker_ids)))).all()
    return [to_record(r) for r in rows]


def running_of_lost_workers(conn: sa.Connection, but: str) -> list[tuple[TaskRecord, str]]:
    """Running tasks whose worker (other than `but`) is registered but no longer active,
    with that worker's status.

    Recovery reads this state rather than remembering whom it superseded or reaped, so a
    recoverer that dies between marking a worker and recovering its tasks leaves nothing
    behind: the next heartbeat of any worker finishes the job.
    """
    rows = conn.execute(
        sa.select(T, W.c.status.label("owner_status"))
        .join(W, W.c.worker_id == T.c.worker_id)
        .where(
            is_running(T.c.status),
            W.c.status != WorkerStatus.ACTIVE.value,
            T.c.worker_id != but,
        )
        .order_by(T.c.id)
    ).all()
    return [(to_record(r), str(r._mapping["owner_status"])) for r in rows]


def running_counts(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.select(T.c.worker_id, sa.func.count()).where(is_running(T.c.status)).group_by(T.c.worker_id)
    ).all()
    return {str(w): int(n) for w, n in rows if w is not None}


def queue_depth(conn: sa.Connection, statuses: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
    """(name, status, count) over every task, or those in `statuses`: one grouped query on
    the (name, status) index."""
    q = sa.select(T.c.name, T.c.status, sa.func.count()).group_by(T.c.name, T.c.status)
    if statuses is not None:
        q = q.where(T.c.status.in_([str(s) for s in statuses]))
    return [(str(r[0]), str(r[1]), int(r[2])) for r in conn.execute(q).all()]


def running(conn: sa.Connection, limit: int) -> list[TaskRecord]:
    """Running tasks, longest-running first."""
    rows = conn.execute(sa.select(T).where(is_running(T.c.status)).order_by(T.c.started_at, T.c.id).limit(limit)).all()
    return [to_record(r) for r in rows]


def names_of(conn: sa.Connection, ids: Iterable[int]) -> dict[int, str]:
    """id → name for the tasks that still exist."""
    ids = list(set(ids))
    if not ids:
        return {}
    return {int(r[0]): str(r[1]) for r in conn.execute(sa.select(T.c.id, T.c.name).where(T.c.id.in_(ids))).all()}


def due_count(conn: sa.Connection, now: datetime) -> int:
    """Pending tasks that are due now (the claim index answers it)."""
    q = sa.select(sa.func.count()).where(is_pending(T.c.status), T.c.next_run_time <= now)
    return int(conn.execute(q).scalar_one())


def oldest_due(conn: sa.Connection, now: datetime) -> TaskRecord | None:
    """The pending task that has been due longest (None when nothing is due)."""
    q = (
        sa.select(T)
        .where(T.c.status == TaskStatus.PENDING.value, T.c.next_run_time <= now)
        .order_by(T.c.next_run_time, T.c.id)
        .limit(1)
    )
    row = conn.execute(q).first()
    return to_record(row) if row is not None else None


def lock(conn: sa.Connection, task_id: int) -> TaskRecord | None:
    """Read a task holding its row lock until commit (SQLite: the file lock is already ours)."""
    return get(conn, task_id, for_update=True)


def count_unfinished_children(conn: sa.Connection, parent_id: int, stage: int) -> int:
    q = sa.select(sa.func.count()).where(
        T.c.parent_id == parent_id,
        T.c.parent_stage == stage,
        T.c.status.notin_([s.value for s in FINISHED_STATUSES]),
    )
    return int(conn.execute(q).scalar_one())


def children(conn: sa.Connection, parent_id: int, stage: int | None = None) -> list[TaskRecord]:
    q = sa.select(T).where(T.c.parent_id == parent_id)
    if stage is not None:
        q = q.where(T.c.parent_stage == stage)
    return [to_record(r) for r in conn.execute(q.order_by(T.c.id)).all()]


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters of `flowd list`, `delete` and the query API; None means any."""

    status: Sequence[str] | None = None
    name: str | None = None
    type: str | None = None
    tag: str | None = None
    labels: Mapping[str, str] | None = None
    parent_id: int | None = None
    root_id: int | None = None
    worker_id: str | None = None
    ids: Sequence[int] | None = None


def _where(q: Any, f: TaskFilter) -> Any:
    if f.status:
        q = q.where(T.c.status.in_(list(f.status)))
    if f.name:
        q = q.where(T.c.name == f.name)
    if f.type:
        q = q.where(T.c.type == f.type)
    if f.tag:
        q = q.where(T.c.tag == f.tag)
    if f.parent_id is not None:
        q = q.where(T.c.parent_id == f.parent_id)
    if f.root_id is not None:
        q = q.where(T.c.root_id == f.root_id)
    if f.worker_id:
        q = q.where(T.c.worker_id == f.worker_id)
    if f.ids is not None:
        q = q.where(T.c.id.in_(list(f.ids)))
    if f.labels:
        # labels are stored as compact JSON text: match the exact "k":"v" pair, as plain
        # text (through the JsonText type the pattern itself would be JSON-encoded)
        text = sa.type_coerce(T.c.labels, sa.Text)
        for k, v in f.labels.items():
            needle = json.dumps({k: v}, separators=(",", ":"))[1:-1]
            q = q.where(text.contains(needle, autoescape=True))
    return q


def query(conn: sa.Connection, f: TaskFilter, limit: int, offset: int, order: str = "desc") -> Page:
    """Tasks matching `f`, newest first by default, one page."""
    ordering = [T.c.id.desc() if order == "desc" else T.c.id.asc()]
    return paging.page(conn, T, lambda q: _where(q, f), ordering, limit, offset, to_record)


def nodes_of_root(conn: sa.Connection, root_id: int) -> list[TaskNode]:
    """Every task of one workflow (the root included) by id, only the columns a tree needs.

    One query on the root index; payloads, results and contexts stay unread (a summary of
    10,000 tasks must not decode 10,000 payloads).
    """
    cols = [T.c[f] for f in _NODE_COLUMNS]
    rows = conn.execute(sa.select(*cols).where(T.c.root_id == root_id).order_by(T.c.id)).all()
    return [
        TaskNode(
            id=TaskId(int(r.id)),
            name=r.name,
            status=TaskStatus(r.status),
            parent_id=TaskId(int(r.parent_id)) if r.parent_id is not None else None,
            stage=int(r.stage),
            error=r.error,
            current_stage_name=r.current_stage_name,
            progress_text=r.progress_text,
            progress_percent=r.progress_percent,
            last_event_time=r.last_event_time,
            flow_id=r.flow_id,
            flow_step=r.flow_step,
        )
        for r in rows
    ]


_NODE_COLUMNS = (
    "id", "name", "status", "parent_id", "stage", "error",
    "current_stage_name", "progress_text", "progress_percent", "last_event_time", "flow_id", "flow_step",
)  # fmt: skip


def matching_ids(conn: sa.Connection, f: TaskFilter) -> list[TaskId]:
    return [TaskId(int(r[0])) for r in conn.execute(_where(sa.select(T.c.id), f)).all()]


def delete(
    conn: sa.Connection, ids: Sequence[int], on_chunk: Callable[[int], None] | None = None
) -> tuple[int, int, int]:
    """Delete tasks with their events and attempts; returns (tasks, events, attempts).

    `on_chunk(tasks deleted so far)` is called after each chunk of 500 (progress display).
    """
    from flowd.store.schema import attempts, events

    if not ids:
        return (0, 0, 0)
    n_ev = n_at = n_t = 0
    ids = list(ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        n_ev += int(conn.execute(sa.delete(events).where(events.c.task_id.in_(chunk))).rowcount or 0)
        n_at += int(conn.execute(sa.delete(attempts).where(attempts.c.task_id.in_(chunk))).rowcount or 0)
        constraints.delete_for(conn, chunk)
        entities.delete_for(conn, chunk)
        flow_ids = {
            int(f)
            for f in conn.execute(sa.select(T.c.flow_id).where(T.c.id.in_(chunk), T.c.flow_id.is_not(None))).scalars()
        }
        n_t += int(conn.execute(sa.delete(T).where(T.c.id.in_(chunk))).rowcount or 0)
        _delete_finished_flows(conn, flow_ids, chunk)
        entities.delete_gone_flows(conn, sorted(flow_ids), chunk)
        if on_chunk is not None:
            on_chunk(n_t)
    return (n_t, n_ev, n_at)


def _delete_finished_flows(conn: sa.Connection, flow_ids: set[int], deleted: Sequence[int]) -> None:
    """Flows left with no step and no join task once these tasks are gone (never a running one)."""
    from flowd.store.schema import flows as F

    steps_left = sa.exists().where(T.c.flow_id == F.c.id)
    join_left = sa.exists().where(T.c.id == F.c.join_task_id)
    conn.execute(
        sa.delete(F).where(
            sa.or_(F.c.id.in_(sorted(flow_ids)), F.c.join_task_id.in_(list(deleted))),
            F.c.status != "running",
            ~steps_left,
            ~join_left,
        )
    )


def stats(
    conn: sa.Connection, tag: str | None = None, statuses: Sequence[str] | None = None
) -> list[tuple[str | None, str, str, int]]:
    q = sa.select(T.c.tag, T.c.name, T.c.status, sa.func.count()).group_by(T.c.tag, T.c.name, T.c.status)
    if tag is not None:
        q = q.where(T.c.tag == tag)
    if statuses:
        q = q.where(T.c.status.in_(list(statuses)))
    rows = conn.execute(q.order_by(T.c.tag, T.c.name, T.c.status)).all()
    return [(r[0], str(r[1]), str(r[2]), int(r[3])) for r in rows]


def stats_by_labels(
    conn: sa.Connection, tag: str | None = None, statuses: Sequence[str] | None = None
) -> list[tuple[dict[str, str], str, str, int]]:
    """(labels, name, status, count) grouped by the stored label set; the caller picks a label."""
    q = sa.select(T.c.labels, T.c.name, T.c.status, sa.func.count()).group_by(T.c.labels, T.c.name, T.c.status)
    if tag is not None:
        q = q.where(T.c.tag == tag)
    if statuses:
        q = q.where(T.c.status.in_(list(statuses)))
    return [(r[0] or {}, str(r[1]), str(r[2]), int(r[3])) for r in conn.execute(q).all()]


def expired_roots(
    conn: sa.Connection, statuses: Sequence[str], older_than: datetime, limit: int, after_id: int = 0
) -> list[TaskId]:
    """Root tasks in `statuses` untouched since `older_than` (retention candidates)."""
    rows = conn.execute(
        sa.select(T.c.id)
        .where(
            T.c.status.in_(list(statuses)),
            T.c.updated_at < older_than,
            T.c.id > after_id,
            sa.or_(T.c.root_id == T.c.id, T.c.root_id.is_(None)),
        )
        .order_by(T.c.id)
        .limit(limit)
    ).all()
    return [TaskId(int(r[0])) for r in rows]


def workflow_members(conn: sa.Connection, root_ids: Sequence[int]) -> list[tuple[TaskId, TaskId, str, datetime]]:
    """(id, root_id, status, updated_at) of every task under these roots."""
    if not root_ids:
        return []
    rows = conn.execute(
        sa.select(T.c.id, T.c.root_id, T.c.status, T.c.updated_at).where(T.c.root_id.in_(list(root_ids)))
    ).all()
    return [(TaskId(int(r[0])), TaskId(int(r[1])), str(r[2]), r[3]) for r in rows]
