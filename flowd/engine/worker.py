"""The worker: registers, claims due tasks, runs them, writes outcomes, keeps leases.

The loop is `run_once()` (one tick: write finished outcomes, enforce deadlines, do due
housekeeping, claim into free slots) wrapped by `run_forever()`. Tests and the bench
drive `run_once` / `run_until_idle` directly. Every write is one short transaction;
no transaction is ever open while a handler runs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import random
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowd.audit import retention
from flowd.clock import after, iso, utcnow
from flowd.engine import flows, ops, schedules
from flowd.engine.hooks import HookRunner
from flowd.engine.notify import Notifier
from flowd.engine.runner import AsyncLoop, ThreadPool
from flowd.engine.task import Task
from flowd.errors import DatabaseUnavailable, TaskTimeout, describe, is_statement_error
from flowd.logging import bind, get_logger, unbind
from flowd.model import NewTask, SubTasks, Suspension, TaskRecord, TaskType
from flowd.plugins import HandlerSpec, Registry
from flowd.registry import catalog, leases
from flowd.rules import options as opt
from flowd.rules import transitions as rules
from flowd.rules.transitions import has_attempts_left
from flowd.settings import Settings, task_defaults
from flowd.store.db import Database
from flowd.store.tasks import Fence

log = get_logger("flowd.worker")
# the same logger's level, asked before building a per-task line nobody will see
_std_log = logging.getLogger("flowd.worker")

Key = tuple[int, int]  # (task id, attempt number)

# Seconds an outcome may wait for others to share its write transaction (see Worker._wait).
FLUSH_WINDOW = 0.002

# Seconds between STATUS updates under systemd without a watchdog (with one, every ping).
STATUS_INTERVAL = 10.0

# Workers a notification wakes, on average, per task it announces (see Worker.wants_wake).
WAKE_FANOUT = 8

# Seconds between the log lines of a worker waiting at start for an unreachable database.
START_REPORT_INTERVAL = 60.0


def new_worker_id(pod_id: str | None) -> str:
    """A unique id for this process: host, pod, pid and a random suffix."""
    host = socket.gethostname().split(".")[0]
    return f"{host}-{pod_id or 'nopod'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class Attempt:
    """An attempt this worker started; `over` once its outcome was written (or it timed out)."""

    task: TaskRecord
    spec: HandlerSpec
    deadline: datetime
    over: bool = False
    future: concurrent.futures.Future[Any] | None = None


class Observer:
    """What the worker reports as it goes (metrics); the base class ignores everything.

    Called on the worker's loop thread, so an implementation must be cheap and must not
    block: it is on the claim and completion path.
    """

    def claimed(self, name: str) -> None:
        """One attempt of task `name` was claimed."""

    def claim_latency(self, seconds: float) -> None:
        """The claim transaction took `seconds` (whether or not it found work)."""

    def ended(self, name: str, outcome: str, seconds: float, *, retried: bool) -> None:
        """An attempt ended: outcome is completed, failed, timed_out, subtasks or suspended."""

    def recovered(self, names: list[str]) -> None:
        """Running tasks of dead or superseded workers went back to pending."""


@dataclass(slots=True)
class Counters:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    stale: int = 0
    recovered: int = 0
    by_event: Counter[str] = field(default_factory=Counter)


class Worker:
    """One worker process's engine. Thread-safe entry points: wake, pause, resume, request_stop."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: Registry,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.clock = clock
        self.pod_id = settings.pod_id
        self.worker_id = settings.worker_id or new_worker_id(settings.pod_id)
        self.identity = (
            leases.Identity(self.worker_id, self.pod_id, socket.gethostname(), os.getpid()) if self.pod_id else None
        )
        self.running: dict[Key, Attempt] = {}
        self.counters = Counters()
        self.paused = False
        self.standby = False
        self.stopping = False
        self.started = False
        self._inbox: queue.SimpleQueue[tuple[Key, ops.Outcome | None] | None] = queue.SimpleQueue()
        self._unwritten: list[tuple[Attempt, ops.Outcome]] = []
        self._pool = ThreadPool(settings.max_concurrent_tasks)
        self._async = AsyncLoop()
        self._lock = threading.Lock()
        self._next: dict[str, datetime] = {}
        self._db_backoff_until: datetime | None = None
        self.on_registered: Callable[[], None] | None = None
        self.notifier = Notifier()
        self._listener: Any = None
        # workers serving handlers, refreshed with this worker's registry rows (see wants_wake)
        self.fleet_size = 1
        self.observer = Observer()
        self.closed = False
        # when the worker last registered or renewed its lease (None: no lease held)
        self.lease_renewed_at: datetime | None = None
        # the registry last published in the fleet-wide handler registry (a swap republishes)
        self._published: Registry | None = None
        self.hooks = HookRunner()

    # -- control (any thread) ------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (a task was submitted in this process)."""
        self._inbox.put(None)

    def wants_wake(self, count: int) -> bool:
        """Whether to answer a notification that `count` tasks became due: a lottery that wakes
        about WAKE_FANOUT workers per task, not the whole idle fleet.

        Every idle listener wakes on a NOTIFY, and each woken worker runs a claim: with 60
        idle workers one submit cost about 60 claims (100-160 ms of the fleet's CPU and
        40-57 ms of the server's), 59 of them finding nothing. Each worker answers with probability
        WAKE_FANOUT * count / fleet size (the fleet as the handler registry counts it), so
        about 8 claim; the chance that none answers is about e^-8 (0.03 %), and then the
        next poll (`poll_interval`) or a freed slot finds the task. A fleet of up to 8
        workers, or a batch as large as the fleet / 8, wakes everyone as before.
        """
        share = WAKE_FANOUT * count / max(1, self.fleet_size)
        return share >= 1 or random.random() < share

    def pause(self) -> None:
        """Stop claiming; running attempts go on."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.wake()

    def request_stop(self) -> None:
        """Begin a graceful stop: no more claims, running attempts drain."""
        if not self.stopping:
            self.notifier.stopping()
        self.stopping = True
        self.wake()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Register in the worker registry (with a pod id) and recover what it must."""
        if self.started:
            return
        now = self.clock()
        self.db.ensure_schema(upgrade=True)
        if self.identity is not None:
            sink = self._sink()
            sweep = leases.register(
                self.db,
                self.identity,
                self.registry.names(),
                self.settings.worker_heartbeat_timeout,
                now,
                recover=self._recovery(sink),
            )
            self._swept(sweep, sink, now)
            self.lease_renewed_at = now
        self.started = True
        for name in ("task_hb", "worker_hb", "sweep", "flows", "retention"):
            self._next[name] = now
        self._next["worker_hb"] = after(now, self.settings.worker_heartbeat_interval)
        self._next["task_hb"] = after(now, self.settings.task_heartbeat_interval)
        self._next["retention"] = after(now, min(self.settings.retention_interval, 60.0))
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            pod_id=self.pod_id,
            db=self.db.display_url,
            handlers=self.registry.names(),
            concurrency=self.settings.max_concurrent_tasks,
        )
        self.notifier.ready(f"worker {self.worker_id} claiming; handlers: {len(self.registry.handlers)}")
        self._fire_worker_event("worker_started", now)
        if self.on_registered is not None:
            self.on_registered()

    def _start_when_reachable(self, stop_event: threading.Event | None) -> bool:
        """`start()`, tried again with a growing pause (up to 30 s) while the database cannot be
        reached; False when a stop came first.

        A fleet started against a full server (too many clients) or before the database is up
        waits for it: one log line at the first failure and at most one a minute after, never
        a traceback per try.
        """
        pause = 0.5
        said_at: float | None = None
        while True:
            try:
                self.start()
                return True
            except DatabaseUnavailable as e:
                if said_at is None or time.monotonic() - said_at >= START_REPORT_INTERVAL:
                    said_at = time.monotonic()
                    log.warning("database_unavailable_at_start", error=str(e), retrying="with back-off up to 30 s")
            # a stop request (signal, request_stop) puts None in the inbox: the pause ends at once
            try:
                self._inbox.get(timeout=pause)
            except queue.Empty:
                pass
            if self.stopping or (stop_event is not None and stop_event.is_set()):
                return False
            pause = min(pause * 2, 30.0)

    def close(self, now: datetime | None = None) -> None:
        """Hand back attempts still running, deregister, release threads."""
        now = now or self.clock()
        if not self.started:  # never registered (the database was never reached): nothing to undo
            self.closed = True
            self._pool.shutdown()
            self._async.shutdown()
            self.hooks.close(timeout=1.0)
            return
        # outcomes that came back during the last wait are written, not handed back
        self._drain_inbox()
        try:
            self._write_outcomes(now)
        except DatabaseUnavailable as e:
            log.error("outcomes_not_written", error=str(e), count=len(self._unwritten))
        live = [a for a in self.running.values() if not a.over]
        if live:
            try:
                sink = self._sink()
                recovered = leases.recover_tasks(
                    self.db,
                    [self.worker_id],
                    {self.worker_id: rules.HAND_BACK},
                    self.worker_id,
                    now,
                    leases.Recovery(self.settings.max_recoveries, self._settle(sink)),
                )
                log.warning("attempts_handed_back", count=len(recovered), task_ids=recovered)
                self._fire(sink, now)
            except DatabaseUnavailable as e:
                log.error("hand_back_failed", error=str(e))
        try:
            catalog.withdraw(self.db, self.worker_id)
        except DatabaseUnavailable as e:
            log.error("handlers_withdraw_failed", error=str(e))
        if self.identity is not None:
            try:
                leases.deregister(self.db, self.identity, now)
            except DatabaseUnavailable as e:
                log.error("deregister_failed", error=str(e))
        self.closed = True
        self.lease_renewed_at = None
        if self._listener is not None:
            self._listener.stop()
        self._pool.shutdown()
        self._async.shutdown()
        log.info("worker_stopped", worker_id=self.worker_id, **self.summary())
        self._fire_worker_event("worker_stopped", now)
        self.hooks.close(timeout=min(self.settings.shutdown_grace, 10.0))

    def healthy(self, now: datetime) -> bool:
        """Running and (with a pod id) holding a lease that has not expired."""
        if not self.started or self.closed:
            return False
        if self.identity is None:
            return True
        renewed = self.lease_renewed_at
        return (
            not self.standby
            and renewed is not None
            and (now - renewed).total_seconds() < self.settings.worker_heartbeat_timeout
        )

    def _settle(self, sink: ops.Sink) -> leases.Settle:
        return lambda conn, task, tr, now: ops.settle_recovered(conn, task, tr, now, sink)

    def _recovery(self, sink: ops.Sink) -> leases.Recovery | None:
        """How this worker recovers lost workers' tasks (None: `recover_running_jobs` is off)."""
        if not self.settings.recover_running_jobs:
            return None
        return leases.Recovery(self.settings.max_recoveries, self._settle(sink))

    def _swept(self, sweep: leases.Sweep, sink: ops.Sink, now: datetime) -> None:
        self._fire(sink, now)  # committed: hooks of recovered and given-up tasks may run
        if sweep.recovered:
            self.counters.recovered += len(sweep.recovered)
            self.observer.recovered(sweep.recovered_names)

    def summary(self) -> dict[str, int]:
        c = self.counters
        return {
            "claimed": c.claimed,
            "completed": c.completed,
            "failed": c.failed,
            "timed_out": c.timed_out,
            "stale": c.stale,
            "recovered": c.recovered,
        }

    # -- the loop --------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Run until `request_stop()` (or `stop_event`), then drain within the grace period."""
        if not self._start_when_reachable(stop_event):
            self.close()
            return
        # a submit in another process wakes the idle loop within milliseconds: LISTEN/NOTIFY
        # on PostgreSQL, a watch on the database file on SQLite (only a waiting loop needs it;
        # run_once callers drive the worker themselves)
        if self._listener is None:
            self._listener = self.db.listen(self.wake, answer=self.wants_wake)
        drain_deadline: float | None = None
        try:
            while True:
                if stop_event is not None and stop_event.is_set():
                    self.stopping = True
                if self.stopping:
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + self.settings.shutdown_grace
                        log.info("worker_draining", running=len(self.running), grace=self.settings.shutdown_grace)
                    if not self.running and not self._unwritten:
                        break
                    if time.monotonic() >= drain_deadline:
                        log.warning("drain_grace_expired", running=len(self.running))
                        break
                self.run_once()
                self._wait(self._idle_wait())
        finally:
            self.close()

    def _idle_wait(self) -> float:
        now = self.clock()
        wait = self.settings.poll_interval
        if self.running and self.free_slots() > 0 and not self._queue_has_more:
            wait = min(wait, self.settings.poll_interval)
        for a in self.running.values():
            if not a.over:
                wait = min(wait, (a.deadline - now).total_seconds())
        for when in self._next.values():
            wait = min(wait, (when - now).total_seconds())
        if self._queue_has_more and self.free_slots() > 0:
            wait = 0
        return max(0.0, wait)

    def _wait(self, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        self._accept(item)
        if item is None:
            return
        # An outcome came back: give the attempts still running a moment to finish too, so
        # one transaction writes them all and the freed slots are claimed together. Each
        # outcome waits at most FLUSH_WINDOW more; nobody can see it as completed before.
        end = time.monotonic() + FLUSH_WINDOW
        while self.running and (left := end - time.monotonic()) > 0:
            try:
                self._accept(self._inbox.get(timeout=left))
            except queue.Empty:
                return

    def _drain_inbox(self) -> None:
        while True:
            try:
                self._accept(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _accept(self, item: tuple[Key, ops.Outcome | None] | None) -> None:
        if item is None:
            return
        key, outcome = item
        att = self.running.pop(key, None)
        if att is None:
            return
        if att.over:
            if outcome is not None:
                log.warning(
                    "late_result_discarded",
                    task_id=att.task.id,
                    attempt=att.task.attempt,
                    reason="attempt already ended (timeout, pause or recovery)",
                )
            return
        if outcome is not None:
            self._unwritten.append((att, outcome))

    def run_once(self, now: datetime | None = None) -> int:
        """One tick: write outcomes, enforce deadlines, housekeeping, claim. Returns work done."""
        if not self.started:
            self.start()
        now = now or self.clock()
        self._drain_inbox()
        self._keepalive(now)
        if self._db_backoff_until is not None and now < self._db_backoff_until:
            return 0
        try:
            done = self._write_outcomes(now)
            done += self._enforce_deadlines(now)
            self._housekeeping(now)
            if not self.stopping and not self.paused and not self.standby:
                done += self._claim(now)
            self._db_backoff_until = None
            return done
        except DatabaseUnavailable as e:
            self._db_backoff_until = after(now, min(5.0, max(0.5, self.settings.poll_interval)))
            log.error("database_unavailable", error=str(e), retry_in=str(self._db_backoff_until))
            return 0
        except Exception:
            # a bug or an unexpected database error must not take the daemon down: log it,
            # back off, and try the tick again (outcomes not yet written are kept)
            self._db_backoff_until = after(now, min(5.0, max(0.5, self.settings.poll_interval)))
            log.exception("worker_tick_failed")
            return 0

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Run ticks until nothing is running and nothing due can be claimed (tests, bench)."""
        self.start()
        end = time.monotonic() + timeout
        total = 0
        while time.monotonic() < end:
            n = self.run_once()
            total += n
            if not self.running and not self._unwritten and n == 0:
                return total
            if n == 0:
                self._wait(min(0.05, self._idle_wait()) if self.running else 0)
        raise TimeoutError(f"worker not idle after {timeout}s: {len(self.running)} running")

    # -- steps -----------------------------------------------------------------------
    _queue_has_more = False

    def free_slots(self) -> int:
        return self.settings.max_concurrent_tasks - len(self.running)

    def _claim(self, now: datetime) -> int:
        slots = self.free_slots()
        if slots <= 0:
            return 0
        reg = self.registry
        by_name = Counter(a.task.name for a in self.running.values())
        limits: dict[str, int] = {}
        for name, spec in reg.handlers.items():
            cap = spec.max_concurrent
            limits[name] = slots if cap is None else max(0, cap - by_name[name])
        t0 = time.perf_counter()
        leased = self.identity is not None
        claimed = ops.claim(
            self.db, self.worker_id, limits, slots, now, reg.versions, leased=leased, aging=self.settings.priority_aging
        )
        self.observer.claim_latency(time.perf_counter() - t0)
        self._queue_has_more = len(claimed) >= slots
        if reg.hooks and claimed:
            self._fire([ops.Written(t, ev, {}) for t in claimed for ev in rules.claimed_events(t)], now)
        for task in claimed:
            try:
                self._start_attempt(reg, task, now)
            except Exception as e:
                # this task cannot start (its deadline is past the calendar, …): its own attempt
                # fails, and the rest of the batch starts as claimed
                self._not_started(task, now, e)
        return len(claimed)

    def _start_attempt(self, reg: Registry, task: TaskRecord, now: datetime) -> None:
        claimed_spec = reg.get(task.name)
        assert claimed_spec is not None
        att = Attempt(task=task, spec=claimed_spec, deadline=after(task.started_at or now, task.timeout))
        self.running[(task.id, task.attempt)] = att
        self.counters.claimed += 1
        self.observer.claimed(task.name)
        if _std_log.isEnabledFor(logging.DEBUG):
            log.debug("task_claimed", task_id=task.id, name=task.name, attempt=task.attempt)
        self._launch(att)

    def _not_started(self, task: TaskRecord, now: datetime, e: Exception) -> None:
        """Fail the attempt of a claimed task that could not be started, like a handler that
        raised (retried while attempts remain); its outcome is written with the others."""
        key = (task.id, task.attempt)
        error = f"the worker could not start this attempt: {describe(e)}"
        log.error("task_not_started", task_id=task.id, name=task.name, attempt=task.attempt, error=error)
        att = self.running.get(key) or Attempt(task=task, spec=HandlerSpec(task.name, _not_run), deadline=now)
        self.running[key] = att
        self._inbox.put((key, ops.Failure(error=error)))

    def _launch(self, att: Attempt) -> None:
        key = (att.task.id, att.task.attempt)
        if att.spec.is_async:
            att.future = self._async.submit(self._run_async(att, key))
        else:
            self._pool.submit(lambda: self._run_sync(att, key))

    def _context(self, att: Attempt) -> dict[str, Any]:
        t = att.task
        return {"task_id": t.id, "task_name": t.name, "attempt": t.attempt, "worker_id": self.worker_id}

    def _run_sync(self, att: Attempt, key: Key) -> None:
        tokens = bind(**self._context(att))
        outcome: ops.Outcome
        try:
            task = Task(att.task, self.db, att.deadline, self.clock, att.spec.steps, self.resolver())
            outcome = self._classify(att, att.spec.fn(task))
        except BaseException as e:  # a handler's sys.exit() must not take the worker down
            outcome = self._failure(att, e)
        finally:
            unbind(tokens)
        self._inbox.put((key, outcome))

    async def _run_async(self, att: Attempt, key: Key) -> None:
        import asyncio

        tokens = bind(**self._context(att))
        outcome: ops.Outcome | None
        try:
            task = Task(att.task, self.db, att.deadline, self.clock, att.spec.steps, self.resolver())
            outcome = self._classify(att, await att.spec.fn(task))
        except asyncio.CancelledError:
            outcome = None
        except BaseException as e:
            outcome = self._failure(att, e)
        finally:
            unbind(tokens)
        self._inbox.put((key, outcome))

    def _failure(self, att: Attempt, e: BaseException) -> ops.Failure:
        timed_out = isinstance(e, TaskTimeout) or self.clock() >= att.deadline
        if is_statement_error(e):
            # a database error's text holds the SQL and its parameters: keep it to the debug log
            log.debug("handler_database_error", exc_info=e)
            error = describe(e)
            tb = "".join(traceback.format_tb(e.__traceback__))[-8000:] + error
        else:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            tb = "".join(traceback.format_exception(e))[-8000:]
        if not timed_out:
            log.warning("task_failed", error=error)
        return ops.Failure(error=error, traceback=tb, timed_out=timed_out, timeout_type="handler")

    def _classify(self, att: Attempt, value: Any) -> ops.Outcome:
        if isinstance(value, SubTasks):
            try:
                return ops.Children(self._children(att.task, value), value.context)
            except opt.InvalidInput as e:
                return ops.Failure(error=f"invalid SubTasks: {e}")
        if isinstance(value, Suspension):
            return ops.Suspend(value.reason, value.context)
        try:
            encoded = opt.json_text("result", value)  # no lone surrogate, not too deep
        except opt.InvalidInput as e:
            return ops.Failure(error=str(e))
        size = len(encoded)  # ASCII: characters are bytes
        if size > self.settings.max_result_bytes:
            return ops.Failure(
                error=f"result is {size} bytes, over max_result_bytes={self.settings.max_result_bytes}: "
                "store large data elsewhere and return a reference"
            )
        return ops.Success(value, complete_progress=att.spec.steps is not None)

    def resolver(self) -> flows.Resolver:
        """Resolves task definitions (children, flow steps) against the current handlers."""
        return flows.Resolver.of_registry(
            self.registry,
            task_defaults(self.settings),
            self.settings.constraints,
            fleet=lambda name: catalog.live(self.db, self.clock(), name),
            max_payload_bytes=self.settings.max_payload_bytes,
        )

    def _children(self, parent: TaskRecord, subtasks: SubTasks) -> list[NewTask]:
        """Resolve each child def: def > child handler's options > parent's priority > settings."""
        return flows.resolve_children(self.resolver(), parent, subtasks.defs, self.clock())

    def _write_outcomes(self, now: datetime) -> int:
        if not self._unwritten:
            return 0
        batch, self._unwritten = self._unwritten, []
        sink = self._sink()
        try:
            items = [(a.task, Fence(self.worker_id, a.task.attempt), o) for a, o in batch]

            def tx(conn: Any) -> list[bool]:
                if sink is not None:
                    sink.clear()  # a transaction retried after a deadlock notes its events again
                return ops.finish_many(conn, items, now, sink)

            oks = self.db.transaction(tx)
            results = [(att, out, ok) for (att, out), ok in zip(batch, oks, strict=True)]
        except DatabaseUnavailable:
            self._unwritten = batch + self._unwritten
            raise
        except ops.StaleBatch:
            # rolled back: one attempt was fenced off; one by one tells which
            self._unwritten = batch + self._unwritten
            return self._write_one_by_one(now)
        except Exception:
            if len(batch) == 1:
                results = [self._write_unrecordable(batch[0], now)]
            else:
                # one outcome the database refuses must not block the others: write one by one
                self._unwritten = batch + self._unwritten
                log.exception("outcome_batch_failed", size=len(batch))
                return self._write_one_by_one(now)
        self._fire(sink, now)  # committed: hooks may run now
        for att, out, ok in results:
            att.over = True
            self._log_outcome(att, out, ok)
            if ok:
                self._observe_end(att, _outcome_kind(out), now)
        return len(batch)

    def _write_one_by_one(self, now: datetime) -> int:
        batch, self._unwritten = self._unwritten, []
        done = 0
        for att, out in batch:
            sink = self._sink()
            try:
                ok = ops.finish(self.db, att.task, out, now, sink)
                self._fire(sink, now)
            except DatabaseUnavailable:
                self._unwritten.append((att, out))
                continue
            except Exception:
                att, out, ok = self._write_unrecordable((att, out), now)
            att.over = True
            self._log_outcome(att, out, ok)
            done += 1
        return done

    def _write_unrecordable(
        self, item: tuple[Attempt, ops.Outcome], now: datetime
    ) -> tuple[Attempt, ops.Outcome, bool]:
        """The database refused an outcome (e.g. a value it cannot store): fail the attempt instead."""
        att, out = item
        log.exception("outcome_not_recordable", task_id=att.task.id, attempt=att.task.attempt)
        failure = ops.Failure(error=f"the outcome could not be recorded: {type(out).__name__} refused by the database")
        with self.db.write() as conn:
            return att, failure, self._finish_in(conn, att, failure, now)

    def _finish_in(self, conn: Any, att: Attempt, out: ops.Outcome, now: datetime, sink: ops.Sink = None) -> bool:
        return ops.finish_in(conn, att.task, Fence(self.worker_id, att.task.attempt), out, now, sink)

    # -- lifecycle hooks -------------------------------------------------------------
    def _sink(self) -> ops.Sink:
        """A list to collect written events in, when any hook listens (else None: no cost)."""
        return [] if self.registry.hooks else None

    def _fire(self, sink: ops.Sink, now: datetime) -> None:
        """Hand committed events to the hooks of the current registry."""
        if not sink:
            return
        hooks = self.registry.hooks
        for w in sink:
            t, ev = w.task, w.event
            doc: dict[str, Any] = {
                "event_type": ev.type.value,
                "task_id": t.id,
                "name": t.name,
                "root_id": t.root_id if t.root_id is not None else t.id,
                "parent_id": t.parent_id,
                "worker_id": self.worker_id,
                "attempt": t.attempt,
                "stage": t.stage,
                "from_status": ev.from_status.value if ev.from_status else None,
                "to_status": ev.to_status.value if ev.to_status else None,
                "message": ev.message,
                "metadata": dict(ev.metadata) if ev.metadata is not None else None,
                "created_at": iso(now),
                "payload": t.payload,
            }
            for key in ("result", "error"):
                if key in w.values:
                    doc[key] = w.values[key]
            self.hooks.fire(hooks, doc)

    def _fire_worker_event(self, event: str, now: datetime) -> None:
        doc = {
            "event_type": event,
            "worker_id": self.worker_id,
            "pod_id": self.pod_id,
            "handlers": self.registry.names(),
            "created_at": iso(now),
        }
        self.hooks.fire(self.registry.hooks, doc)

    def _log_outcome(self, att: Attempt, out: ops.Outcome, ok: bool) -> None:
        t = att.task
        ctx = {"task_id": t.id, "name": t.name, "attempt": t.attempt, "worker_id": self.worker_id}
        if not ok:
            self.counters.stale += 1
            log.warning("stale_write", **ctx, reason="attempt no longer owned by this worker")
            return
        if isinstance(out, ops.Success):
            self.counters.completed += 1
            if _std_log.isEnabledFor(logging.INFO):
                event = "task_status_changed" if t.type is TaskType.CRON else "task_completed"
                log.info(event, **ctx)
        elif isinstance(out, ops.Failure):
            if out.timed_out:
                self.counters.timed_out += 1
                log.warning("task_timed_out", **ctx, error=out.error)
            else:
                self.counters.failed += 1
                log.warning("task_failed", **ctx, error=out.error)
        elif isinstance(out, ops.Children):
            log.info("task_subtasks_created", **ctx, count=len(out.news))
        else:
            log.info("task_suspended", **ctx, reason=out.reason)

    def _enforce_deadlines(self, now: datetime) -> int:
        n = 0
        for att in list(self.running.values()):
            if att.over or now < att.deadline:
                continue
            err = f"attempt exceeded its {att.task.timeout:g}s timeout"
            sink = self._sink()
            ok = ops.time_out(self.db, att.task, now, "total", err, sink)
            self._fire(sink, now)
            att.over = True
            n += 1
            if ok:
                self.counters.timed_out += 1
                self._observe_end(att, "timed_out", now)
                log.warning("task_timed_out", task_id=att.task.id, name=att.task.name, attempt=att.task.attempt)
            if att.future is not None:
                att.future.cancel()
            else:
                log.warning(
                    "attempt_abandoned",
                    task_id=att.task.id,
                    attempt=att.task.attempt,
                    detail="sync handler ignored its deadline; its slot stays busy until it returns",
                )
        return n

    def _observe_end(self, att: Attempt, outcome: str, now: datetime) -> None:
        started = att.task.started_at or now
        retried = outcome in ("failed", "timed_out") and has_attempts_left(att.task)
        self.observer.ended(att.task.name, outcome, (now - started).total_seconds(), retried=retried)

    def _due(self, name: str, now: datetime, every: float) -> bool:
        if now < self._next.get(name, now):
            return False
        self._next[name] = after(now, every)
        return True

    def _keepalive(self, now: datetime) -> None:
        """WATCHDOG=1 with a STATUS line for systemd (no-op outside it).

        Runs before anything that may fail on the database: the watchdog is there to catch
        a hung loop, and restarting a worker would not cure a database outage.
        """
        if not self.notifier.enabled:
            return
        wd = self.notifier.watchdog_interval
        if not self._due("notify", now, wd if wd is not None else STATUS_INTERVAL):
            return
        status = self.status_line(now)
        if wd is not None:
            self.notifier.watchdog(status)
        else:
            self.notifier.status(status)

    def status_line(self, now: datetime) -> str:
        """`running 2/10; queued 5; ...` for `systemctl status` (one cheap count query)."""
        c = self.counters
        head = f"running {len(self.running)}/{self.settings.max_concurrent_tasks}"
        tail = f"claimed {c.claimed}; completed {c.completed}; failed {c.failed}; timed out {c.timed_out}"
        if self.stopping:
            tail += "; draining"
        elif self.standby:
            tail += "; standby (another instance holds the pod)"
        if self._db_backoff_until is not None:
            return f"{head}; database unreachable; {tail}"
        try:
            queued = ops.due_count(self.db, now)
        except DatabaseUnavailable:
            return f"{head}; database unreachable; {tail}"
        return f"{head}; queued {queued}; {tail}"

    def _housekeeping(self, now: datetime) -> None:
        s = self.settings
        self._publish_handlers(now)
        if self._due("task_hb", now, s.task_heartbeat_interval) and self.running:
            from flowd.store import tasks as task_store

            live = [(a.task.id, a.task.attempt) for a in self.running.values() if not a.over]
            if live:
                with self.db.write() as conn:
                    task_store.heartbeat(conn, self.worker_id, live, now)
        if self.identity is not None and self._due("worker_hb", now, s.worker_heartbeat_interval):
            sink = self._sink()
            sweep = leases.heartbeat(
                self.db,
                self.identity,
                self.registry.names(),
                s.worker_heartbeat_timeout,
                now,
                recover=self._recovery(sink),
                standby=self.standby,
            )
            self._swept(sweep, sink, now)
            self.lease_renewed_at = now if sweep.lease_held else None
            if sweep.standby != self.standby:
                self.standby = sweep.standby
                log.warning("worker_standby" if sweep.standby else "worker_active", worker_id=self.worker_id)
        if self._due("sweep", now, s.task_heartbeat_interval):
            ops.sweep_stalled(
                self.db,
                after(now, -s.task_heartbeat_timeout),
                now,
                timeout=s.task_heartbeat_timeout,
                recovering=self.identity is not None and s.recover_running_jobs,
            )
        # flow deadlines are checked about once a second: a timeout is seconds, not milliseconds
        if self._due("flows", now, max(1.0, s.poll_interval)):
            flows.sweep_deadlines(self.db, now)
        if self._due("retention", now, s.retention_interval):
            retention.run_if_leader(self.db, self.worker_id, _policy(s), now, lease=s.retention_interval * 2)

    def _publish_handlers(self, now: datetime) -> None:
        """Keep this worker's rows in the fleet-wide handler registry current.

        A swapped registry (hot reload, `use()`) is published at the next tick; otherwise the
        rows are renewed with the worker heartbeat, so those of a killed worker expire.
        """
        s = self.settings
        reg = self.registry
        if reg is not self._published:
            # at start and at each swap: the schedules declared with @handler(cron=...) follow the code
            schedules.sync(self.db, reg, s, now)
            catalog.publish(self.db, self.worker_id, reg, s.worker_heartbeat_timeout, now)
            self._published = reg
            self._next["handlers_hb"] = after(now, s.worker_heartbeat_interval)
        elif self._due("handlers_hb", now, s.worker_heartbeat_interval):
            catalog.renew(self.db, self.worker_id, reg, s.worker_heartbeat_timeout, now)
        else:
            return
        if self._listener is not None:  # only the wake-up lottery needs it (wants_wake)
            self.fleet_size = catalog.fleet_size(self.db, now)


def _not_run(task: Task) -> None:
    """The stand-in handler of an attempt that could not start (never called)."""


def _outcome_kind(out: ops.Outcome) -> str:
    if isinstance(out, ops.Success):
        return "completed"
    if isinstance(out, ops.Failure):
        return "timed_out" if out.timed_out else "failed"
    if isinstance(out, ops.Children):
        return "subtasks"
    return "suspended"


def _policy(s: Settings) -> retention.Policy:
    return retention.Policy(expire_time=s.retention_expire_time, statuses=tuple(s.retention_statuses))
