"""Runs handler calls off the claim loop: sync handlers on daemon threads, async on one loop.

Threads are daemons so a handler that ignores its deadline can never keep the process
alive at exit; its slot stays busy until it really returns (the worker counts it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class ThreadPool:
    """A fixed set of daemon threads pulling jobs from a queue."""

    def __init__(self, size: int, name: str = "flowd-run") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class AsyncLoop:
    """One asyncio event loop on a daemon thread, for `async def` handlers."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flowd-async", daemon=True)
            self._thread.start()
            self._ready.wait()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
