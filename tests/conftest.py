"""Shared fixtures: a fresh database per test on every backend that is available.

`db_url` is parametrised over SQLite (always), PostgreSQL (FLOWD_TEST_POSTGRES_URL) and
MySQL/MariaDB (FLOWD_TEST_MYSQL_URL); a backend whose URL is unset is skipped, and the
session's summary says so. No fakes of the database anywhere.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import pgbouncer

BACKENDS = ("sqlite", "postgres", "mysql")
# the backends of the fixtures below, plus PgBouncer for the tests marked `pooled`
POOLED_FIXTURES = ("db_url", "empty_db_url", "any_cli", "chaos_cli")
WITH_POOLER = (*BACKENDS, "pgbouncer")
_SKIPPED: set[str] = set()


def server_url(kind: str) -> str | None:
    return os.environ.get({"postgres": "FLOWD_TEST_POSTGRES_URL", "mysql": "FLOWD_TEST_MYSQL_URL"}[kind])


def _admin(kind: str) -> sa.Engine:
    base = server_url(kind)
    if not base:
        _SKIPPED.add(kind)
        pytest.skip(f"{kind}: set FLOWD_TEST_{'POSTGRES' if kind == 'postgres' else 'MYSQL'}_URL to run")
    return sa.create_engine(base, isolation_level="AUTOCOMMIT")


def _server_db(kind: str, name: str) -> str:
    return sa.make_url(server_url(kind) or "").set(database=name).render_as_string(hide_password=False)


# kind → the session's template: a database (or SQLite file) migrated to head once, so
# each test clones it in a fraction of a second instead of running the migrations
_TEMPLATES: dict[str, str] = {}


def _template(kind: str, tmp_root: Path) -> str:
    if kind not in _TEMPLATES:
        from flowd.store.db import Database

        if kind == "sqlite":
            target = str(tmp_root / "template.db")
            url = f"sqlite:///{target}"
        else:
            target = "flowd_t_tmpl_" + uuid.uuid4().hex[:8]
            admin = _admin(kind)
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE DATABASE {target}"))
            admin.dispose()
            url = _server_db(kind, target)
        db = Database(url)
        db.ensure_schema()
        db.dispose()  # PostgreSQL clones only a template nobody is connected to
        _TEMPLATES[kind] = target
    return _TEMPLATES[kind]


def _clone(kind: str, template: str, admin: sa.Engine, name: str) -> None:
    with admin.connect() as c:
        if kind == "postgres":
            c.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {template}"))
            return
        # MySQL has no template databases: copy each table's definition (no foreign keys
        # in the schema, so LIKE copies everything) and the revision row
        c.execute(sa.text(f"CREATE DATABASE {name}"))
        for (table,) in c.execute(sa.text(f"SHOW TABLES FROM {template}")).all():
            c.execute(sa.text(f"CREATE TABLE {name}.{table} LIKE {template}.{table}"))
        c.execute(sa.text(f"INSERT INTO {name}.flowd_alembic_version SELECT * FROM {template}.flowd_alembic_version"))


def fresh_database(kind: str, tmp_path: Path, *, migrated: bool = False) -> Iterator[str]:
    """Yield the URL of a new database of `kind` (empty, or at the schema head); drop it afterwards.

    "pgbouncer": a PostgreSQL database reached through the session's PgBouncer in
    transaction mode (tests/pgbouncer.py).
    """
    if kind == "pgbouncer":
        direct = server_url("postgres")
        if not direct:
            _SKIPPED.add("postgres")
            pytest.skip("pgbouncer: set FLOWD_TEST_POSTGRES_URL to run the pooled cases")
        pgbouncer.start(direct)
        gen = fresh_database("postgres", tmp_path, migrated=migrated)
        try:
            yield pgbouncer.pooled_url(next(gen))
        finally:
            for _ in gen:
                pass
        return
    if kind == "sqlite":
        path = tmp_path / "flowd.db"
        if migrated:
            shutil.copyfile(_template(kind, tmp_path.parent), path)
        yield f"sqlite:///{path}"
        return
    admin = _admin(kind)
    name = "flowd_t_" + uuid.uuid4().hex[:12]
    if migrated:
        _clone(kind, _template(kind, tmp_path.parent), admin, name)
    else:
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield _server_db(kind, name)
    finally:
        _drop(kind, admin, name)
        admin.dispose()


def _drop(kind: str, admin: sa.Engine, name: str) -> None:
    with admin.connect() as c:
        if kind == "postgres":
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        else:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PgBouncer backend runs only the tests marked `pooled`: the others' copies are deselected."""
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        through_pooler = spec is not None and any(spec.params.get(f) == "pgbouncer" for f in POOLED_FIXTURES)
        (drop if through_pooler and item.get_closest_marker("pooled") is None else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session: pytest.Session) -> None:
    pgbouncer.stop()
    for kind, name in _TEMPLATES.items():
        if kind != "sqlite":
            admin = _admin(kind)
            _drop(kind, admin, name)
            admin.dispose()


@pytest.fixture
def closers() -> list[Callable[[], None]]:
    """What must close before the test's database is dropped, whatever the fixture order."""
    return []


def _close_all(closers: list[Callable[[], None]]) -> None:
    while closers:
        closers.pop()()


def _database(kind: str, tmp_path: Path, closers: list[Callable[[], None]], migrated: bool) -> Iterator[str]:
    gen = fresh_database(kind, tmp_path, migrated=migrated)
    yield next(gen)
    _close_all(closers)  # managers first: a worker deregisters in the database being dropped
    for _ in gen:
        pass


@pytest.fixture(params=WITH_POOLER)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, closers: list[Callable[[], None]]) -> Iterator[str]:
    """A fresh database at the schema head on each backend (servers skipped when their URL is unset)."""
    yield from _database(request.param, tmp_path, closers, migrated=True)


@pytest.fixture(params=WITH_POOLER)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path, closers: list[Callable[[], None]]) -> Iterator[str]:
    """A fresh, empty database (no schema) on each backend."""
    yield from _database(request.param, tmp_path, closers, migrated=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flowd.db'}"


FAST = {
    "poll_interval": 0.05,
    "task_heartbeat_interval": 0.2,
    "task_heartbeat_timeout": 5,
    "worker_heartbeat_interval": 0.2,
    "worker_heartbeat_timeout": 2,
    "retention_interval": 3600,
    "shutdown_grace": 5,
}


@pytest.fixture
def make_manager(tmp_path: Path, closers: list[Callable[[], None]]) -> Iterator[object]:
    """Build TaskManagers on a database; all are closed at the end of the test."""
    from flowd.manager import TaskManager

    handlers = tmp_path / "handlers"
    handlers.mkdir(exist_ok=True)

    def make(db_url: str, **overrides: object) -> TaskManager:
        settings = {**FAST, "handlers_dir": str(handlers), **overrides}
        m = TaskManager(db_url=db_url, **settings)
        closers.append(m.close)
        return m

    yield make
    _close_all(closers)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    missing = [k for k in ("postgres", "mysql") if not server_url(k)]
    if missing:
        terminalreporter.write_line(f"flowd: backends skipped (no server URL set): {', '.join(missing)}", yellow=True)
    else:
        terminalreporter.write_line("flowd: ran on sqlite, postgres and mysql", green=True)
