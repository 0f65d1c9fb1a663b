"""executemany without SQLAlchemy's per-row parameter handling: the hot path of claims and ends.

SQLAlchemy checks, orders and converts every row's parameters in Python, about 5 µs a row;
a claim and an end write six rows a task (two events, the attempt row, the task row, its
last event, the attempt close). Here a statement is compiled once per dialect and key set,
each parameter's bind processor (milliseconds, JSON text) is looked up once, and the rows
go to the driver's executemany as plain tuples or dicts. The SQL is SQLAlchemy's own.

Only for INSERTs and UPDATEs whose parameters are plain bound values (no expanding IN).
On PostgreSQL SQLAlchemy itself turns an INSERT executemany into multi-row VALUES
batches, which beats the driver's one-statement-per-row executemany: INSERTs there keep
going through SQLAlchemy.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    positional: bool
    names: tuple[str, ...]  # every parameter, in the statement's order
    constants: dict[str, Any]  # the statement's own bound values, processed
    get: Callable[[Mapping[str, Any]], Any]  # a row (with the constants) → its values in order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)


_plans: dict[tuple[int, str, tuple[str, ...]], _Plan] = {}


def _plan(conn: sa.Connection, stmt: sa.ClauseElement, keys: tuple[str, ...]) -> _Plan:
    dialect = conn.dialect
    cache_key = (id(stmt), dialect.name, keys)
    plan = _plans.get(cache_key)
    if plan is None:
        compiled: Any = stmt.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
        constants: dict[str, Any] = {}
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            bind = compiled.binds[name]
            proc = bind.type.bind_processor(dialect)
            if name in keys:
                if proc is not None:
                    processors.append((i, proc))
            else:
                const = bind.effective_value
                constants[name] = proc(const) if proc else const
        get = operator.itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
        plan = _Plan(str(compiled), bool(compiled.positional), tuple(names), constants, get, tuple(processors))
        # statements are module-level constants: the cache stays as small as their number
        _plans[cache_key] = plan
    return plan


def executemany(conn: sa.Connection, stmt: sa.ClauseElement, rows: Sequence[Mapping[str, Any]]) -> int:
    """Run `stmt` once per row (all rows have the same keys); returns the driver's rowcount.

    `stmt` must be a long-lived object (a module constant): its compiled form is cached by
    identity. Raw values go through the columns' own bind processors, as SQLAlchemy would.
    """
    if not rows:
        return 0
    keys = tuple(rows[0])
    plan = _plan(conn, stmt, keys)
    constants = plan.constants
    values = [plan.get({**r, **constants}) for r in rows] if constants else [plan.get(r) for r in rows]
    if plan.processors:
        columns: list[Any] = list(zip(*values, strict=True))
        for i, proc in plan.processors:
            columns[i] = _column(proc, columns[i])
        values = list(zip(*columns, strict=True))
    args: list[Any] = values if plan.positional else [dict(zip(plan.names, v, strict=True)) for v in values]
    return int(conn.exec_driver_sql(plan.sql, args).rowcount or 0)


def _column(proc: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    """`proc` over one column; a value repeated (the same object: a batch's `now`) converts once."""
    out = []
    last: Any = _UNSET
    done: Any = None
    for v in values:
        if v is not last:
            last, done = v, proc(v)
        out.append(done)
    return out


_UNSET = object()


def inserts_raw(conn: sa.Connection) -> bool:
    """Whether INSERT executemany is faster here than SQLAlchemy's (not on PostgreSQL, see above)."""
    return conn.dialect.name != "postgresql"
