"""Lifecycle hooks (`@on("task_completed")` in a plugin): run after the commit, off the loop.

The worker hands each committed event to `HookRunner.fire`; one dispatcher thread runs the
matching hooks in order, each on its own thread with its timeout. A hook that raises is
logged; one that blocks past its timeout is abandoned (logged), and the next one runs.
Nothing a hook does reaches the task or the claim loop.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowd.logging import get_logger
from flowd.plugins import HookSpec

log = get_logger("flowd.hooks")

# beyond this many queued calls (hooks far slower than the work), new ones are dropped, logged
MAX_QUEUED = 10_000


class HookRunner:
    """Runs hooks on a background thread; `fire` never blocks the caller."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[HookSpec, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = 0
        self.ran = 0
        self.failed = 0

    def fire(self, hooks: Mapping[str, Sequence[HookSpec]], event: dict[str, Any]) -> None:
        """Queue the hooks registered for `event["event_type"]` (no-op when there are none)."""
        matching = hooks.get(event["event_type"], ())
        if not matching:
            return
        for hook in matching:
            if self._queue.qsize() >= MAX_QUEUED:
                log.error("hook_dropped", hook=hook.label, hook_event=event["event_type"], reason="queue full")
                continue
            with self._lock:
                self._busy += 1
            self._queue.put((hook, event))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        # handler threads fire too (progress, checkpoints): start exactly one dispatcher
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._dispatch, name="flowd-hooks", daemon=True)
            self._thread.start()

    def _dispatch(self) -> None:
        while (item := self._queue.get()) is not None:
            hook, event = item
            try:
                self._run(hook, event)
            finally:
                with self._lock:
                    self._busy -= 1

    def _run(self, hook: HookSpec, event: dict[str, Any]) -> None:
        box: dict[str, BaseException] = {}

        def call() -> None:
            try:
                result = hook.fn(event)
                if inspect.isawaitable(result):
                    asyncio.run(_wait(result))
            except BaseException as e:  # a hook's sys.exit() must not take the worker down
                box["error"] = e

        t = threading.Thread(target=call, name=f"flowd-hook-{hook.event}", daemon=True)
        t.start()
        t.join(hook.timeout)
        ctx = {"hook": hook.label, "hook_event": hook.event, "task_id": event.get("task_id")}
        if t.is_alive():
            self.failed += 1
            log.error("hook_timed_out", timeout=hook.timeout, **ctx)
        elif "error" in box:
            self.failed += 1
            err = box["error"]
            log.error("hook_failed", error=f"{type(err).__name__}: {err}", exc_info=err, **ctx)
        else:
            self.ran += 1

    def idle(self) -> bool:
        with self._lock:
            return self._busy == 0

    def close(self, timeout: float) -> None:
        """Let queued hooks run for up to `timeout` seconds, then stop the dispatcher."""
        deadline = time.monotonic() + timeout
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.idle():
            log.warning("hooks_abandoned_at_stop", pending=self._busy)
        self._queue.put(None)


async def _wait(awaitable: Any) -> None:
    await awaitable
