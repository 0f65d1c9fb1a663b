"""Many rows in one driver call: the hot path of claims, ends and bulk enqueue.

A claim and an end write six rows a task (two events, the attempt row, the task row, the
completed event, the attempt close). Two verbs do it, the rows of a call sharing their keys:

* `insert(conn, table, rows)`, or `insert_values(conn, table, keys, tuples)` for rows the
  caller has already put in the driver's form (`to_driver`): a bulk enqueue converts what
  its tasks share once and builds a tuple a task;
* `update(conn, table, rows, match=…)`: for each row, UPDATE the row of `table` whose
  columns equal the row's `match` keys (plus constant conditions), setting its other keys.

Both hand the rows to the driver's executemany (psycopg pipelines them, PyMySQL folds an
INSERT into multi-row VALUES) with the statement compiled once per key set and the
columns' own bind processors (milliseconds, JSON text) applied column by column: in
SQLAlchemy's executemany the per-row checks and conversions in Python cost more than
SQLite's own insert. PostgreSQL takes a large batch differently: inserts as COPY, updates as
one `UPDATE … FROM unnest(arrays)` (a statement a batch, not a row: +25 % processed tasks/s
with two workers sharing the machine's two cores with the server).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


def insert(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], same: Mapping[str, Any] | None = None
) -> None:
    """Insert `rows` (all with the same keys) into `table`, each with the values of `same` too."""
    if not rows:
        return
    keys = tuple(rows[0])
    columns = [_column(processor(conn, table, k), [r[k] for r in rows]) for k in keys]
    for k, v in (same or {}).items():
        proc = processor(conn, table, k)
        keys += (k,)
        columns.append([proc(v) if proc else v] * len(rows))
    insert_values(conn, table, keys, list(zip(*columns, strict=True)))


def processor(conn: sa.Connection, table: sa.Table, key: str) -> Callable[[Any], Any] | None:
    """The column's bind processor on this connection's dialect (milliseconds, JSON text), if any."""
    cache_key = (conn.dialect.name, table.name, key)
    if cache_key not in _processors:
        _processors[cache_key] = table.c[key].type.bind_processor(conn.dialect)
    return _processors[cache_key]


_processors: dict[tuple[str, str, str], Callable[[Any], Any] | None] = {}


def to_driver(conn: sa.Connection, table: sa.Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with every value in the driver's form (what `insert_values` takes)."""
    out = dict(row)
    for k, v in out.items():
        proc = processor(conn, table, k)
        if proc is not None:
            out[k] = proc(v)
    return out


def insert_values(conn: sa.Connection, table: sa.Table, keys: tuple[str, ...], values: Sequence[Sequence[Any]]) -> None:
    """Insert rows given as value tuples in `keys` order, already in the driver's form
    (`to_driver`, `processor`): the caller converts what a batch shares once, not per row."""
    if not values:
        return
    if conn.dialect.name == "postgresql" and len(values) >= COPY_MIN_ROWS:
        _copy(conn, table, keys, values)
        return
    conn.exec_driver_sql(_insert_sql(conn, table, keys), list(values))


def insert_values_returning_ids(
    conn: sa.Connection, table: sa.Table, keys: tuple[str, ...], values: Sequence[Sequence[Any]]
) -> list[int]:
    """`insert_values` that returns the new rows' ids in row order, for databases that cannot
    hand out ids before the insert (MySQL/MariaDB): multi-row INSERT … RETURNING where the
    database has it (SQLAlchemy's insertmanyvalues), else one INSERT and its lastrowid a row."""
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        raw = _raw_table(table)
        stmt = sa.insert(raw).returning(raw.c.id, sort_by_parameter_order=True)
        return [int(r[0]) for r in conn.execute(stmt, [dict(zip(keys, v, strict=True)) for v in values])]
    sql = _insert_sql(conn, table, keys)
    return [int(conn.exec_driver_sql(sql, tuple(v)).lastrowid) for v in values]


def _insert_sql(conn: sa.Connection, table: sa.Table, keys: tuple[str, ...]) -> str:
    cache_key = ("insert", table.name, keys, conn.dialect.name)
    sql = _statements.get(cache_key)
    if sql is None:
        prep = conn.dialect.identifier_preparer
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(k) for k in keys)}) "
            f"VALUES ({', '.join([mark] * len(keys))})"
        )
        _statements[cache_key] = sql
    return sql


_statements: dict[tuple[Any, ...], str] = {}


@functools.cache
def _raw_table(table: sa.Table) -> sa.Table:
    """`table` with its columns' plain storage types: values pass to the driver as they are."""
    return sa.Table(
        table.name,
        sa.MetaData(),
        *(
            sa.Column(
                c.name,
                c.type.impl_instance if isinstance(c.type, sa.TypeDecorator) else c.type,
                primary_key=c.primary_key,
            )
            for c in table.columns
        ),
    )


# PostgreSQL: from this many rows on, COPY (inserts) and unnest (updates) beat the pipelined executemany
COPY_MIN_ROWS = 20


def _copy(conn: sa.Connection, table: sa.Table, keys: tuple[str, ...], values: Sequence[Sequence[Any]]) -> None:
    """COPY … FROM STDIN in the connection's transaction (psycopg)."""
    q = conn.dialect.identifier_preparer.quote
    sql = f"COPY {conn.dialect.identifier_preparer.format_table(table)} ({', '.join(q(k) for k in keys)}) FROM STDIN"
    cursor: Any = conn.connection.cursor()
    try:
        with cursor.copy(sql) as copy:
            for row in values:
                copy.write_row(row)
    finally:
        cursor.close()


def update(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    match: Mapping[str, str],
    equal: Mapping[str, Any] | None = None,
    null: Sequence[str] = (),
) -> int:
    """Per row: UPDATE `table` SET (the row's other keys) WHERE column = row[key] for every
    `match` item (row key → column), column = value for every `equal` item, and column
    IS NULL for every `null` column. Returns how many rows were updated; keys in `match`
    must identify one row each."""
    if not rows:
        return 0
    keys = tuple(rows[0])
    equal = dict(equal or {})
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        return _update_from_arrays(conn, table, keys, rows, match, equal, null)
    if conn.dialect.name in ("mysql", "mariadb") and len(rows) > 1:
        return _update_joined(conn, table, keys, rows, match, equal, null)
    spec = ("update", table.name, tuple(match.items()), tuple(equal.items()), tuple(null))

    def build() -> sa.Update:
        # compiled with the row keys as column keys: SET gets one parameter per other key
        return sa.update(table).where(
            *(table.c[col] == sa.bindparam(key) for key, col in match.items()),
            *(table.c[col] == value for col, value in equal.items()),
            *(table.c[col].is_(None) for col in null),
        )

    return _executemany(conn, spec, keys, build, rows)


def _update_from_arrays(
    conn: sa.Connection,
    table: sa.Table,
    keys: tuple[str, ...],
    rows: Sequence[Mapping[str, Any]],
    match: Mapping[str, str],
    equal: Mapping[str, Any],
    null: Sequence[str],
) -> int:
    """PostgreSQL: `update` as one statement, `UPDATE … FROM unnest(one array a key)`.

    The server plans and starts one statement instead of one a row, and the client sends
    a few arrays instead of a pipelined statement a row. The count is of the rows updated,
    as with executemany (a row matched twice would count once: keys identify one row each).
    """
    dialect = conn.dialect
    cache_key = ("unnest", table.name, keys, tuple(match.items()), tuple(equal), tuple(null))
    sql = _statements.get(cache_key)
    columns = {k: table.c[match.get(k, k)] for k in keys}
    if sql is None:
        prep = dialect.identifier_preparer
        name = prep.format_table(table)
        alias = {k: f"v{i}" for i, k in enumerate(keys)}
        arrays = ", ".join(f"%s::{columns[k].type.compile(dialect)}[]" for k in keys)
        sets = ", ".join(f"{prep.quote(k)} = v.{alias[k]}" for k in keys if k not in match)
        where = [f"{name}.{prep.quote(col)} = v.{alias[k]}" for k, col in match.items()]
        where += [f"{name}.{prep.quote(col)} = %s" for col in equal]
        where += [f"{name}.{prep.quote(col)} IS NULL" for col in null]
        sql = (
            f"UPDATE {name} SET {sets} FROM unnest({arrays}) AS v({', '.join(alias.values())}) "
            f"WHERE {' AND '.join(where)}"
        )
        _statements[cache_key] = sql
    params: list[Any] = [_column(processor(conn, table, match.get(k, k)), [r[k] for r in rows]) for k in keys]
    for col, value in equal.items():
        proc = processor(conn, table, col)
        params.append(proc(value) if proc else value)
    return int(conn.exec_driver_sql(sql, tuple(params)).rowcount or 0)


def _update_joined(
    conn: sa.Connection,
    table: sa.Table,
    keys: tuple[str, ...],
    rows: Sequence[Mapping[str, Any]],
    match: Mapping[str, str],
    equal: Mapping[str, Any],
    null: Sequence[str],
) -> int:
    """MySQL/MariaDB: `update` as one statement, `UPDATE t JOIN (SELECT … UNION ALL SELECT …) v`.

    The driver runs an executemany of UPDATEs as one statement and one round trip a row;
    this is one of each for the batch. The count is of the rows matched (the dialect asks
    for found rows), as with executemany: keys identify one row each.
    """
    dialect = conn.dialect
    cache_key = ("joined", table.name, keys, tuple(match.items()), tuple(equal), tuple(null))
    head = _statements.get(cache_key)
    if head is None:
        prep = dialect.identifier_preparer
        name = prep.format_table(table)
        alias = {k: f"v{i}" for i, k in enumerate(keys)}
        sets = ", ".join(f"t.{prep.quote(k)} = v.{alias[k]}" for k in keys if k not in match)
        where = [f"t.{prep.quote(col)} = v.{alias[k]}" for k, col in match.items()]
        where += [f"t.{prep.quote(col)} = %s" for col in equal]
        where += [f"t.{prep.quote(col)} IS NULL" for col in null]
        first = "SELECT " + ", ".join(f"%s AS {alias[k]}" for k in keys)
        # {rows}: the first SELECT, then one UNION ALL SELECT a further row
        head = f"UPDATE {name} AS t JOIN ({first}{{rows}}) AS v ON {' AND '.join(where)} SET {sets}"
        _statements[cache_key] = head
    more = " UNION ALL SELECT " + ", ".join(["%s"] * len(keys))
    sql = head.replace("{rows}", more * (len(rows) - 1), 1)
    columns = [_column(processor(conn, table, match.get(k, k)), [r[k] for r in rows]) for k in keys]
    params: list[Any] = [v for row in zip(*columns, strict=True) for v in row]
    for col, value in equal.items():
        proc = processor(conn, table, col)
        params.append(proc(value) if proc else value)
    return int(conn.exec_driver_sql(sql, tuple(params)).rowcount or 0)


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    positional: bool
    names: tuple[str, ...]  # every parameter, in the statement's order
    constants: dict[str, Any]  # the statement's own bound values, processed
    get: Callable[[Mapping[str, Any]], Any]  # a row (with the constants) → its values in order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)


# one entry per (statement shape, dialect): as many as the store has call sites and key sets
_plans: dict[tuple[Any, ...], _Plan] = {}


def _plan(
    conn: sa.Connection, spec: tuple[Any, ...], keys: tuple[str, ...], build: Callable[[], sa.ClauseElement]
) -> _Plan:
    dialect = conn.dialect
    cache_key = (*spec, keys, dialect.name)
    plan = _plans.get(cache_key)
    if plan is None:
        compiled: Any = build().compile(dialect=dialect, column_keys=list(keys))
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
        _plans[cache_key] = plan
    return plan


def _executemany(
    conn: sa.Connection,
    spec: tuple[Any, ...],
    keys: tuple[str, ...],
    build: Callable[[], sa.ClauseElement],
    rows: Sequence[Mapping[str, Any]],
) -> int:
    plan = _plan(conn, spec, keys, build)
    constants = plan.constants
    values = [plan.get({**r, **constants}) for r in rows] if constants else [plan.get(r) for r in rows]
    if plan.processors:
        columns: list[Any] = list(zip(*values, strict=True))
        for i, proc in plan.processors:
            columns[i] = _column(proc, columns[i])
        values = list(zip(*columns, strict=True))
    args: list[Any] = values if plan.positional else [dict(zip(plan.names, v, strict=True)) for v in values]
    return int(conn.exec_driver_sql(plan.sql, args).rowcount or 0)


def _column(proc: Callable[[Any], Any] | None, values: Sequence[Any]) -> list[Any]:
    """`proc` over one column; a value repeated (the same object: a batch's `now`) converts once."""
    if proc is None:
        return list(values)
    out = []
    last: Any = _UNSET
    done: Any = None
    for v in values:
        if v is not last:
            last, done = v, proc(v)
        out.append(done)
    return out


_UNSET = object()
