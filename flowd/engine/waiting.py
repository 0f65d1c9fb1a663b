"""Waiting for tasks to end: one watcher per TaskManager, however many callers wait.

Callers (threads of a web app, coroutines) register the ids they wait for. One checker
thread reads which of them have ended — a single primary-key query for all of them — when
the database says something may have ended, and hands each waiter its answer:

* PostgreSQL: every transaction that completes or permanently fails a task sends `NOTIFY
  flowd_ended`; the checker LISTENs (the workers' mechanism, on its own channel);
* SQLite: the watch on the database's `-wal` file the workers use (every commit writes it);
* MySQL/MariaDB: the check itself at the workers' probe interval (50 ms), only while someone
  waits.

`poll_interval` stays the fallback (a lost notification, in-memory SQLite). The watcher
starts with the first waiter and runs until the manager closes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from flowd.errors import DatabaseUnavailable
from flowd.logging import get_logger
from flowd.model import TaskId
from flowd.store import tasks as task_store
from flowd.store.db import Database

log = get_logger("flowd.wait")

# the checker reads at most this often, however busy the database: ends arrive in bursts
_MIN_GAP = 0.005


class Waiters:
    """Thread-safe registry of awaited task ids; `ended` callbacks run on the checker thread."""

    def __init__(self, db: Database, poll_interval: float) -> None:
        self._db = db
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._waiting: dict[TaskId, list[Callable[[], None]]] = {}
        self._kick = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None

    def add(self, task_id: TaskId, ended: Callable[[], None]) -> Callable[[], None]:
        """Call `ended()` once `task_id` is completed or permanently failed; returns a remover."""
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("this TaskManager is closed")
            self._waiting.setdefault(task_id, []).append(ended)
            if self._thread is None:
                self._start()
        self._kick.set()  # it may have ended before we registered: check now

        def remove() -> None:
            with self._lock:
                callbacks = self._waiting.get(task_id)
                if callbacks is not None and ended in callbacks:
                    callbacks.remove(ended)
                    if not callbacks:
                        del self._waiting[task_id]

        return remove

    def wait(self, task_id: TaskId, timeout: float | None) -> bool:
        """Block until `task_id` has ended (True) or `timeout` seconds passed (False)."""
        done = threading.Event()
        remove = self.add(task_id, done.set)
        try:
            return done.wait(timeout)
        finally:
            remove()

    async def wait_async(self, task_id: TaskId, timeout: float | None) -> bool:
        """`wait` for coroutines: the event loop is never blocked (the checker thread resolves a future)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not fut.done():
                fut.set_result(None)

        def ended() -> None:
            loop.call_soon_threadsafe(resolve)

        remove = self.add(task_id, ended)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            remove()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            thread, self._thread = self._thread, None
        self._kick.set()
        if self._watch is not None:
            self._watch.stop()
        if thread is not None:
            thread.join(5)

    def _start(self) -> None:
        self._watch = self._db.watch_ends(self._kick.set)
        self._thread = threading.Thread(target=self._run, name="flowd-wait", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._kick.wait(self._poll)
            self._kick.clear()
            if self._closed.is_set():
                return
            with self._lock:
                ids = list(self._waiting)
            if not ids:
                continue
            try:
                ended: list[TaskId] = []
                with self._db.read() as conn:
                    for i in range(0, len(ids), 1000):
                        ended += task_store.ended_among(conn, ids[i : i + 1000])
            except Exception as e:  # an unreachable database, or anything else: the waiters wait on
                log.warning("wait_check_failed", error=str(e) if isinstance(e, DatabaseUnavailable) else repr(e))
                self._closed.wait(min(self._poll, 1.0))
                continue
            with self._lock:
                callbacks = [cb for tid in ended for cb in self._waiting.pop(tid, [])]
            for cb in callbacks:
                try:
                    cb()
                except RuntimeError:  # an event loop closed meanwhile: that waiter is gone
                    pass
            self._closed.wait(_MIN_GAP)
