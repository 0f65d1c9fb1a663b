"""Cross-process wake-ups: PostgreSQL LISTEN/NOTIFY, SQLite a watch on the file, MySQL a probe.

A submit (or any change that makes a task due now) sends `NOTIFY flowd_tasks` inside its
transaction, so the notification is delivered at commit — never before the row is visible.
A worker's listener thread holds its own connection, LISTENs, and calls `wake()` on each
notification; it reconnects and LISTENs again after a lost connection, and the worker's
poll interval stays the fallback.

SQLite has no notifications, but in WAL mode every commit writes to the `-wal` file: a
thread that stats the files every few milliseconds (no database access, no lock) sees
another process's commit within that interval, at a negligible cost in CPU.

MySQL/MariaDB have neither: a thread asks the server every few tens of milliseconds for the
newest pending task's `updated_at` and the highest task id (two index look-ups, no table
scan). A submit, a retry or a resume changes one of them; the worker then claims at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import sqlalchemy as sa

from flowd.logging import get_logger
from flowd.urls import mask_url, scrub

CHANNEL = "flowd_tasks"
# a task reached completed or permanently_failed: what `TaskManager.wait()` listens for
ENDED_CHANNEL = "flowd_ended"
log = get_logger("flowd.wakeup")


def notify(conn: sa.Connection, count: int = 1) -> None:
    """Announce `count` due tasks to listening workers (PostgreSQL; a no-op elsewhere).

    The payload is the count: a listener may leave a small announcement to a few of the
    fleet (Worker.wants_wake). An empty payload (an older flowd) counts as one.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {CHANNEL}, '{max(1, int(count))}'")


def notify_ended(conn: sa.Connection) -> None:
    """Tell waiting callers (`TaskManager.wait`) that tasks ended (PostgreSQL; a no-op elsewhere).
    Identical notifications of one transaction are delivered as one: a batch of ends costs one."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {ENDED_CHANNEL}")


def announced(payload: str) -> int:
    """The task count a notification's payload announces (1 when it says nothing usable)."""
    try:
        return max(1, int(payload))
    except ValueError:
        return 1


class _WakeThread:
    """A daemon thread that calls `wake` when it sees new work; `stop()` ends it."""

    name = "flowd-wake"

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        raise NotImplementedError


def say_listen_unavailable(url: str) -> None:
    """The one line a worker writes when it cannot LISTEN: it polls instead."""
    log.warning(
        "listen_unavailable",
        db=url,
        reason="the database URL goes through a transaction-mode pooler, where LISTEN cannot work",
        fix="set db_listen_url (FLOWD_DB_LISTEN_URL) to a direct connection to PostgreSQL",
        fallback="polling every poll_interval",
    )


class Listener(_WakeThread):
    """Calls `wake` on every NOTIFY (PostgreSQL only).

    LISTEN needs a session: behind a transaction-mode pooler the server connection that
    listened is handed to other clients and notifications never arrive. `pooled` None
    asks the first connection (`behind_pooler`); a pooled connection ends the thread
    with one warning, and the worker's poll finds the work.
    """

    name = "flowd-listen"

    def __init__(
        self,
        url: sa.URL,
        wake: Callable[[], None],
        *,
        poll: float = 1.0,
        pooled: bool | None = None,
        answer: Callable[[int], bool] | None = None,
        channel: str = CHANNEL,
    ) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._display = mask_url(self._conninfo)
        self._poll = poll
        self._pooled = pooled
        self._answer = answer
        self._channel = channel
        self.connected = threading.Event()
        super().__init__(wake)

    def _run(self) -> None:
        import psycopg

        from flowd.store.db import behind_pooler

        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    if self._pooled is None:
                        self._pooled = behind_pooler(conn)
                    if self._pooled:
                        say_listen_unavailable(self._display)
                        return
                    conn.execute(f"LISTEN {self._channel}")
                    self.connected.set()
                    backoff = 0.5
                    # a missed notification while reconnecting is covered by this wake-up
                    self._wake()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=self._poll, stop_after=1):
                            if self._answer is None or self._answer(announced(n.payload)):
                                self._wake()
            except Exception as e:  # a lost connection: LISTEN again after a pause
                self.connected.clear()
                # libpq may quote the connection string back: never its password
                reason = scrub(str(e), self._conninfo).splitlines()[0] if str(e) else type(e).__name__
                log.warning("listen_connection_lost", error=reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


# how often a SQLite worker looks for other processes' commits: the idle submit→start latency
FILE_WATCH_INTERVAL = 0.01


class FileWatcher(_WakeThread):
    """Calls `wake` when the SQLite `-wal` file changes (a commit)."""

    name = "flowd-watch"

    def __init__(self, path: str, wake: Callable[[], None], *, interval: float = FILE_WATCH_INTERVAL) -> None:
        self._wal = path + "-wal"
        self._interval = interval
        super().__init__(wake)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._wal)
        except OSError:
            return None
        # a checkpoint rewrites the WAL from its start: the size may repeat, the mtime not
        return st.st_mtime_ns, st.st_size

    def _run(self) -> None:
        last = self._stamp()
        # a plain sleep is the cheapest wait: this loop runs 100 times a second while idle
        while not self._stop.is_set():
            time.sleep(self._interval)
            stamp = self._stamp()
            if stamp != last:
                last = stamp
                self._wake()


# how often a MySQL worker asks whether a task became pending: the idle submit→start latency
PROBE_INTERVAL = 0.05


class Ticker(_WakeThread):
    """Calls `wake` every `interval` seconds: on MySQL/MariaDB, a waiter's probe is the check
    of the awaited tasks itself (primary-key look-ups), run at the workers' probe interval."""

    name = "flowd-tick"

    def __init__(self, wake: Callable[[], None], *, interval: float = PROBE_INTERVAL) -> None:
        self._interval = interval
        super().__init__(wake)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._wake()


def _stamp_query() -> sa.Select[Any]:
    from flowd.store.schema import tasks as T

    # each answered from an index alone: (status, updated_at) and the primary key
    newest_pending = sa.select(sa.func.max(T.c.updated_at)).where(T.c.status == "pending").scalar_subquery()
    newest_id = sa.select(sa.func.max(T.c.id)).scalar_subquery()
    return sa.select(newest_pending, newest_id)


class Prober(_WakeThread):
    """Calls `wake` when the newest pending task or task id changes (MySQL/MariaDB).

    The engine is the probe's own (one connection); it is disposed when the thread ends.
    """

    name = "flowd-probe"

    def __init__(self, engine: sa.Engine, wake: Callable[[], None], *, interval: float = PROBE_INTERVAL) -> None:
        self._engine = engine
        self._interval = interval
        self._sql = str(_stamp_query().compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        super().__init__(wake)

    def _run(self) -> None:
        last: tuple[Any, ...] | None = None
        conn: sa.Connection | None = None
        while not self._stop.wait(self._interval):
            try:
                # one connection kept for the probe, in autocommit (each probe sees the latest
                # commits) and the statement compiled once: a round trip a probe, little else
                if conn is None:
                    conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                stamp = tuple(conn.exec_driver_sql(self._sql).one())
            except Exception as e:  # the worker's own loop reports an unreachable database
                if conn is not None:
                    log.warning("wakeup_probe_failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
                    conn.invalidate()
                    conn = None
                continue
            if last is not None and stamp != last:
                self._wake()
            last = stamp
        if conn is not None:
            conn.close()
        self._engine.dispose()  # the probe's own engine (see Database.listen)
