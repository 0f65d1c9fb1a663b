"""One paged query shape for tasks, events and attempts: a count and one ordered page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from flowd.model import Page


def page(
    conn: sa.Connection,
    table: sa.FromClause,
    where: Callable[[Any], Any],
    ordering: Sequence[Any],
    limit: int,
    offset: int,
    to_record: Callable[[Any], Any],
) -> Page:
    """`where` adds the filters to a select; the total counts every matching row."""
    total = int(conn.execute(where(sa.select(sa.func.count()).select_from(table))).scalar_one())
    rows = conn.execute(where(sa.select(table)).order_by(*ordering).limit(limit).offset(offset)).all()
    return Page(items=[to_record(r) for r in rows], total=total, limit=limit, offset=offset)
