"""The Database handle: one SQLAlchemy engine per process, short read and write transactions."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url

from flowd.errors import BadInput, DatabaseUnavailable, SchemaMismatch, TransactionConflict
from flowd.logging import get_logger
from flowd.store.schema import SCHEMA_REVISION
from flowd.urls import mask_url, scrub

T = TypeVar("T")
log = get_logger("flowd.store")

# PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# MySQL/MariaDB error codes: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
_CONFLICT_MYSQL_CODES = frozenset({1213, 1205})


def is_conflict(e: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back and may simply run again."""
    orig = getattr(e, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return len(args) > 0 and args[0] in _CONFLICT_MYSQL_CODES


def _parse_url(url: str) -> sa.URL:
    try:
        return make_url(url)
    except exc.ArgumentError as e:
        raise BadInput(
            f"bad database URL {mask_url(url)!r}: use sqlite:///path, postgresql+psycopg://… or mysql+pymysql://…"
        ) from e


def _sqlite_write_engine(url: sa.URL, synchronous: str, pool_size: int) -> sa.Engine:
    eng = sa.create_engine(
        url,
        connect_args={"timeout": 60, "check_same_thread": False},
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=60,
    )

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy's begin event decide how transactions start (pysqlite's own
        # implicit BEGIN is deferred, which would let two writers read-then-write)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn: sa.Connection) -> None:
        # every transaction takes the write lock up front: a claim's SELECT and UPDATE
        # are then one atomic step across processes
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("flowd_write", True) else "BEGIN")

    return eng


STATEMENT_TIMEOUT = 60.0
"""Seconds a server may spend on one statement (lock waits included) before it is cancelled."""


def _server_limits(dialect: str, statement_timeout: float) -> dict[str, Any]:
    """Driver arguments that bound every wait: connecting, a silent network, a read.

    PostgreSQL gets no startup `options`: a pooler in transaction mode (PgBouncer) refuses
    them, and the statement limit is set per session or per transaction instead (see
    `_postgres_sessions`).
    """
    ms = int(statement_timeout * 1000)
    if dialect == "postgresql":
        return {
            "connect_timeout": 10,
            # a peer gone without a word (cable, VM pause) is noticed in about a minute,
            # not after the kernel's two hours
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": ms,
        }
    # PyMySQL's socket timeouts: a read that never returns fails after the statement's limit
    # plus a margin for the server to report its own timeout first
    margin = int(statement_timeout) + 30
    return {"connect_timeout": 10, "read_timeout": margin, "write_timeout": margin}


def behind_pooler(dbapi_conn: Any) -> bool:
    """Whether a connection pooler stands between this PostgreSQL connection and the server.

    The server announces its backend's process id at connect (the cancel key); a pooler that
    hands server connections to many clients (PgBouncer, pgcat, Odyssey, cloud proxies)
    answers the startup itself with a cancel key of its own, so the id it announced is not
    the id of the backend that runs our queries. A plain TCP relay (a port mapping) passes
    the server's answer through and counts as direct. Leaves no transaction open.
    """
    row = dbapi_conn.execute("SELECT pg_backend_pid()").fetchone()
    dbapi_conn.rollback()
    return bool(row[0] != dbapi_conn.info.backend_pid)


def _limit_mysql_statements(engine: sa.Engine, statement_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if "mariadb" in str(dbapi_conn.get_server_info()).lower():
            cur.execute(f"SET SESSION max_statement_time = {statement_timeout:g}")
        else:  # MySQL 8 bounds read-only statements only; lock waits have innodb_lock_wait_timeout
            cur.execute(f"SET SESSION max_execution_time = {int(statement_timeout * 1000)}")
        cur.close()


class Database:
    """Owns the engine; `write()` and `read()` yield a connection inside one transaction.

    On a server the engine holds at most `pool_size` connections (no overflow): a worker's
    whole budget, plus the one connection its wake-up thread keeps (`listen`). `pooled`
    says whether PostgreSQL connections go through a transaction-mode pooler: "auto" asks
    the first connection (`behind_pooler`), "true"/"false" decide without asking.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        sqlite_pool_size: int | None = None,
        sqlite_synchronous: str = "NORMAL",
        statement_timeout: float = STATEMENT_TIMEOUT,
        pooled: str = "auto",
        listen_url: str | None = None,
    ) -> None:
        self.url = _parse_url(url)
        self.listen_url = _parse_url(listen_url) if listen_url else self.url
        self._raw_url = url
        # every URL shown or logged goes through mask_url: the password and any secret
        # query parameter (?password=, ?sslpassword=, ?token=...) become ***
        self.display_url = mask_url(url)
        self.dialect = self.url.get_backend_name()
        self.pool_size = pool_size
        self._statement_timeout = statement_timeout
        # None until the first PostgreSQL connection answered (pooled="auto")
        self._pooled_setting = pooled
        self.pooled: bool | None = {"true": True, "false": False}.get(pooled)
        if self.dialect != "postgresql":
            self.pooled = False
        if self.dialect == "sqlite":
            self.engine = _sqlite_write_engine(self.url, sqlite_synchronous, sqlite_pool_size or pool_size)
        elif self.dialect in ("postgresql", "mysql", "mariadb"):
            self.engine = self._server_engine(self.url, pool_size)
        else:
            raise BadInput(f"unsupported database {self.dialect!r}: use sqlite, postgresql or mysql")
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _server_engine(self, url: sa.URL, pool_size: int) -> sa.Engine:
        kwargs: dict[str, Any] = {
            # the budget is hard: a thread that finds every connection busy waits for one
            # (transactions are short) rather than opening more than the fleet planned for
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": self._statement_timeout + 10,
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            # READ COMMITTED everywhere: a sibling-count after locking the parent sees
            # the children other transactions committed meanwhile
            "isolation_level": "READ COMMITTED",
            "connect_args": _server_limits(self.dialect, self._statement_timeout),
        }
        try:
            engine = sa.create_engine(url, **kwargs)
        except ImportError as e:
            extra = "postgres" if self.dialect == "postgresql" else "mysql"
            raise DatabaseUnavailable(
                f"the driver for {self.display_url} is not installed: pip install 'flowd[{extra}]'"
            ) from e
        if self.dialect == "postgresql":
            self._postgres_sessions(engine, self._statement_timeout)
        else:
            _limit_mysql_statements(engine, self._statement_timeout)
        return engine

    def _postgres_sessions(self, engine: sa.Engine, statement_timeout: float | None) -> None:
        """Bound each statement without session state a pooler could leak or lose.

        Direct: `SET statement_timeout` once per connection. Behind a transaction-mode
        pooler the server connection changes from one transaction to the next, so the
        limit is `SET LOCAL` at the start of each transaction (one more round trip), and
        psycopg prepares no statements (a prepared statement lives on one server
        connection: the next transaction may run on another, where it "does not exist").
        """
        ms = int(statement_timeout * 1000) if statement_timeout is not None else 0

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            if self.pooled is None:
                self.pooled = behind_pooler(dbapi_conn)
                if self.pooled:
                    log.info("database_pooler_detected", db=self.display_url, mode="no session state")
            if self.pooled:
                dbapi_conn.prepare_threshold = None
            elif ms:
                dbapi_conn.execute(f"SET statement_timeout = {ms}")
                dbapi_conn.commit()

        if ms:

            @event.listens_for(engine, "begin")
            def _begin(conn: sa.Connection) -> None:
                if self.pooled:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database file (None for a server or an in-memory database)."""
        name = self.url.database
        return name if self.is_sqlite and name and name != ":memory:" else None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def skip_locked(self) -> bool:
        """Row locks with SKIP LOCKED (PostgreSQL, MySQL 8, MariaDB 10.6+); SQLite locks the file."""
        return not self.is_sqlite

    def _unavailable(self, e: Exception) -> DatabaseUnavailable:
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e) else type(e).__name__
        reason = scrub(reason, self._raw_url)
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        if is_conflict(e):
            return TransactionConflict(f"database {self.display_url}: transaction conflict: {reason}")
        return DatabaseUnavailable(f"database {self.display_url} is unreachable: {reason}")

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE); commits on success."""
        self.ensure_schema()
        try:
            with self._connect(write=True) as conn, conn.begin():
                yield conn
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise self._unavailable(e) from e

    def transaction(self, work: Callable[[sa.Connection], T], *, tries: int = 5) -> T:
        """Run `work(conn)` in one write transaction; run it again after a deadlock or
        serialization failure (the database rolled it back), up to `tries` times.

        `work` may run more than once: it must change nothing outside the transaction, or
        reset what it changes when it starts.
        """
        for attempt in range(1, tries):
            try:
                with self.write() as conn:
                    return work(conn)
            except TransactionConflict as e:
                log.info("transaction_conflict_retried", attempt=attempt, error=str(e))
                # jittered, growing pause: the two parties of a deadlock must not meet again
                time.sleep(random.uniform(0.005, 0.025) * 2**attempt)
        with self.write() as conn:
            return work(conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction (a consistent snapshot on SQLite WAL)."""
        self.ensure_schema()
        try:
            with self._connect(write=False) as conn, conn.begin():
                yield conn
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise self._unavailable(e) from e

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sa.Connection]:
        try:
            conn = self.engine.connect()
        except (exc.DBAPIError, exc.TimeoutError) as e:
            raise self._unavailable(e) from e
        try:
            conn.info["flowd_write"] = write
            yield conn
        finally:
            conn.close()

    def ensure_schema(self, *, upgrade: bool = False) -> None:
        """Check the schema before first use: create it in an empty database (idempotent, safe
        against a concurrent creator); migrate an older one only with `upgrade` (`flowd db
        upgrade`, a starting worker), else refuse with `SchemaMismatch`, as for a newer one."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            current = self._current_revision()
            if current != SCHEMA_REVISION:
                if current is not None and not upgrade:
                    raise self._mismatch(current)
                self.create_schema(existing=upgrade)
            self._schema_ready = True

    def _mismatch(self, current: str) -> SchemaMismatch:
        """The one-line refusal for a database at `current`, another revision than this code's."""
        from flowd.store import migrate

        if migrate.is_known(current):
            return SchemaMismatch(
                f"database {self.display_url} is at schema revision {current}, this flowd needs {SCHEMA_REVISION}:"
                " run `flowd db upgrade`"
            )
        return SchemaMismatch(
            f"database {self.display_url} is at schema revision {current}, newer than this flowd knows"
            f" (its newest is {SCHEMA_REVISION}): upgrade flowd"
        )

    def _current_revision(self) -> str | None:
        """The database's revision, by one cheap query (no Alembic import on the hot path)."""
        try:
            with self._connect(write=False) as conn, conn.begin():
                row = conn.execute(sa.text("SELECT version_num FROM flowd_alembic_version")).first()
        except (exc.OperationalError, exc.ProgrammingError) as e:
            if "flowd_alembic_version" in str(e) or "exist" in str(e).lower():
                return None
            raise self._unavailable(e) from e
        return str(row[0]) if row else None

    def create_schema(self, *, existing: bool = True) -> tuple[str | None, str]:
        """Migrate the schema to this code's head revision under the schema lock; returns
        (from, to). Without `existing`, only an empty database is created: one at an older
        revision is refused (`SchemaMismatch`). A newer revision is always refused."""
        from flowd.store import migrate

        # servers: a connection of its own, without the statement timeout (rebuilding an
        # index of a large table may take longer than any claim ever should)
        engine = self.engine if self.is_sqlite else self._migration_engine()
        try:
            with engine.connect() as conn:
                conn.info["flowd_write"] = True
                with conn.begin(), migrate.schema_lock(conn):
                    before = migrate.current(conn)
                    if (
                        before is not None
                        and before != SCHEMA_REVISION
                        and (not existing or not migrate.is_known(before))
                    ):
                        raise self._mismatch(before)
                    result = migrate.upgrade(conn)
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise self._unavailable(e) from e
        finally:
            if engine is not self.engine:
                engine.dispose()
        if result[0] is not None and result[0] != result[1]:
            log.info("schema_migrated", db=self.display_url, from_revision=result[0], to_revision=result[1])
        return result

    def _migration_engine(self) -> sa.Engine:
        engine = sa.create_engine(
            self.url, poolclass=sa.NullPool, isolation_level="READ COMMITTED", connect_args={"connect_timeout": 10}
        )
        if self.dialect == "postgresql":
            self._postgres_sessions(engine, None)
        return engine

    def schema_version(self) -> tuple[str | None, str]:
        """(the database's revision, this code's head revision)."""
        from flowd.store import migrate

        try:
            with self._connect(write=False) as conn, conn.begin():
                return migrate.current(conn), migrate.head()
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise self._unavailable(e) from e

    def server_info(self, clock: Callable[[], datetime]) -> tuple[str, datetime | None, datetime]:
        """(server version, the server's UTC clock or None on SQLite, `clock()` at the same moment).

        The local time is the midpoint of the clock query's round trip, so the difference of
        the two is the skew give or take half a round trip. Never creates the schema.
        """
        queries = {
            "postgresql": ("SHOW server_version", "SELECT clock_timestamp() AT TIME ZONE 'UTC'"),
            "mysql": ("SELECT VERSION()", "SELECT UTC_TIMESTAMP(6)"),
            "mariadb": ("SELECT VERSION()", "SELECT UTC_TIMESTAMP(6)"),
            "sqlite": ("SELECT sqlite_version()", None),
        }
        version_sql, time_sql = queries[self.dialect]
        server = None
        try:
            with self._connect(write=False) as conn, conn.begin():
                version = str(conn.execute(sa.text(version_sql)).scalar_one())
                before = clock()
                # SQLite runs inside this process: its clock is this host's clock
                if time_sql is not None:
                    server = conn.execute(sa.text(time_sql)).scalar_one()
                local = before + (clock() - before) / 2
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise self._unavailable(e) from e
        if server is not None and server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        return version, server, local

    def is_known_revision(self, revision: str) -> bool:
        """Whether this code's migrations include `revision`."""
        from flowd.store import migrate

        return migrate.is_known(revision)

    def listen(self, wake: Callable[[], None], *, answer: Callable[[int], bool] | None = None) -> Any:
        """Start a thread that calls `wake` on new work: LISTEN (PostgreSQL), a watch on the
        database file (SQLite), a probe of the newest pending task (MySQL/MariaDB); None
        where only polling works (in-memory SQLite, PostgreSQL behind a pooler with no
        direct `listen_url`). On a server the thread keeps one connection of its own.
        `answer(count)` decides whether a NOTIFY announcing `count` due tasks wakes this
        process (None: every one does)."""
        from flowd.store import wakeup

        if self.dialect == "postgresql":
            separate = self.listen_url != self.url
            if self.pooled and not separate:
                wakeup.say_listen_unavailable(self.display_url)
                return None
            # a listen URL of its own is probed in "auto" and trusted otherwise
            pooled = (None if self._pooled_setting == "auto" else False) if separate else self.pooled
            return wakeup.Listener(self.listen_url, wake, pooled=pooled, answer=answer).start()
        if self.sqlite_file is not None:
            return wakeup.FileWatcher(self.sqlite_file, wake).start()
        if not self.is_sqlite:
            # its own engine of one connection: the probe never waits behind the worker's pool
            return wakeup.Prober(self._server_engine(self.url, 1), wake).start()
        return None

    def watch_ends(self, wake: Callable[[], None]) -> Any:
        """Start a thread that calls `wake` when tasks may have ended (for `TaskManager.wait`):
        LISTEN on the ended channel (PostgreSQL), the watch on the database file (SQLite), a
        tick at the probe interval (MySQL/MariaDB); None for in-memory SQLite (poll only)."""
        from flowd.store import wakeup

        if self.dialect == "postgresql":
            separate = self.listen_url != self.url
            if self.pooled and not separate:  # LISTEN needs a session: poll_interval it is
                wakeup.say_listen_unavailable(self.display_url)
                return None
            pooled = (None if self._pooled_setting == "auto" else False) if separate else self.pooled
            return wakeup.Listener(self.listen_url, wake, pooled=pooled, channel=wakeup.ENDED_CHANNEL).start()
        if self.sqlite_file is not None:
            return wakeup.FileWatcher(self.sqlite_file, wake).start()
        if not self.is_sqlite:
            return wakeup.Ticker(wake).start()
        return None

    def pooling_report(self) -> dict[str, Any] | None:
        """PostgreSQL: pooling and the connection budget as the server sees them (None elsewhere).

        `pooled` (db_url through a pooler, asked whatever the setting), `listen_pooled` (the LISTEN URL; None when it
        could not be reached, with `listen_error`), `statement_timeout` (seconds in force
        inside a transaction), `max_connections`, `reserved` (superuser slots) and `in_use`
        (client backends on the whole server).
        """
        if self.dialect != "postgresql":
            return None
        with self.read() as conn:
            # asked again whatever the setting says: a doctor checks the setting too
            raw: Any = conn.connection.dbapi_connection
            announced = raw.info.backend_pid
            detected = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != announced
            timeout = conn.exec_driver_sql(
                "SELECT EXTRACT(epoch FROM current_setting('statement_timeout')::interval)"
            ).scalar_one()
            max_connections = int(conn.exec_driver_sql("SHOW max_connections").scalar_one())
            reserved = int(conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar_one())
            in_use = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).scalar_one()
        report: dict[str, Any] = {
            "pooled": bool(detected),
            "pooled_setting": self._pooled_setting,
            "listen_pooled": bool(detected) if self.pooled is None else self.pooled,
            "listen_error": None,
            "statement_timeout": float(timeout),
            "max_connections": max_connections,
            "reserved": reserved,
            "in_use": int(in_use),
        }
        if self.listen_url != self.url:
            import psycopg

            conninfo = self.listen_url.set(drivername="postgresql").render_as_string(hide_password=False)
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    report["listen_pooled"] = behind_pooler(conn)
            except psycopg.Error as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raw = self.listen_url.render_as_string(hide_password=False)
                reason, shown = scrub(reason, raw), mask_url(raw)
                report["listen_pooled"] = None
                report["listen_error"] = f"{shown} is unreachable: {reason}"
        return report

    def dispose(self) -> None:
        self.engine.dispose()
