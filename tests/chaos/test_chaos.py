"""The crash harness: real worker processes SIGKILLed, frozen and restarted under load.

Several `flowd worker` processes (pods a, b, c, later restarts with the same pods and
new ones) share one database while an in-process TaskManager submits a mix of tasks
(quick, slow, failing with retries, multi-stage fan-out workflows, a cron every second).
At random moments a worker is SIGKILLed (restarted with its pod, a new pod, or not at
all), SIGSTOPped for longer than its lease and SIGCONTed, or stopped with SIGTERM (once
or twice). Then the chaos stops, the fleet drains, and the invariants of SEMANTICS.md
§2-§6 are checked over the database.

Bounded by default (~45 s of chaos on SQLite, ~20 s per server backend); set
FLOWD_CHAOS_SECONDS for longer runs and FLOWD_CHAOS_SEED to replay a schedule.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowd.manager import TaskManager
from flowd.store.schema import attempts as A
from flowd.store.schema import events as E
from flowd.store.schema import tasks as T
from tests.conftest import WITH_POOLER, fresh_database
from tests.e2e.conftest import Cli

SEED = int(os.environ.get("FLOWD_CHAOS_SEED", "4242"))
SECONDS = float(os.environ.get("FLOWD_CHAOS_SECONDS", "45"))
# server backends get a shorter run so the whole harness stays within ~2-3 minutes
PER_BACKEND = {"sqlite": SECONDS, "postgres": SECONDS * 0.45, "mysql": SECONDS * 0.45, "pgbouncer": SECONDS * 0.45}
FIRST_STRIKES = ("stop", "kill_same_pod")
LEASE = 1.5  # worker_heartbeat_timeout: a SIGSTOP longer than this gets the worker reaped

# also through PgBouncer in transaction mode (tests/pgbouncer.py)
pytestmark = [pytest.mark.chaos, pytest.mark.pooled]

WORKER_ENV = {
    "FLOWD_POLL_INTERVAL": "0.1",
    "FLOWD_MAX_CONCURRENT_TASKS": "4",
    "FLOWD_TASK_HEARTBEAT_INTERVAL": "0.3",
    # longer than any SIGSTOP below: a frozen pod worker is recovered through its lease
    "FLOWD_TASK_HEARTBEAT_TIMEOUT": "8",
    "FLOWD_WORKER_HEARTBEAT_INTERVAL": "0.3",
    "FLOWD_WORKER_HEARTBEAT_TIMEOUT": str(LEASE),
    "FLOWD_SHUTDOWN_GRACE": "4",
    "FLOWD_RETENTION_INTERVAL": "3600",
    # the harness kills workers at random, not because of a handler: a task caught by three
    # kills in a row must still be recovered here (max_recoveries has tests of its own)
    "FLOWD_MAX_RECOVERIES": "1000",
}

HANDLERS = """
import time
from flowd import SubTasks, handler


def mark(task):
    # the result names the attempt that produced it: the harness checks its owner wrote it
    return {"w": task.worker_id, "a": task.attempt}


@handler("quick")
def quick(task):
    return mark(task)


@handler("slow")
def slow(task):
    task.progress("working", stage_name="sleep", percent=0)
    end = time.monotonic() + float(task.payload.get("secs", 1.0))
    while time.monotonic() < end:
        time.sleep(0.05)
    task.audit("slept", metadata={"secs": task.payload.get("secs")})
    return mark(task)


@handler("flaky", max_retries=3)
def flaky(task):
    if task.retry_count < int(task.payload.get("fail", 1)):
        raise RuntimeError(f"planned failure {task.retry_count + 1}")
    return mark(task)


@handler("fanout")
def fanout(task):
    if task.stage < int(task.payload.get("stages", 1)):
        n = int(task.payload.get("n", 3))
        kids = [
            {"name": "slow", "payload": {"secs": 0.5}} if i % 3 == 0 else {"name": "quick", "payload": {}}
            for i in range(n)
        ]
        return SubTasks(kids, context=str(task.stage).encode())
    return {**mark(task), "children": len(task.children()), "context": (task.context or b"").decode()}


@handler("tick")
def tick(task):
    return mark(task)
"""


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    pod: str
    stopped: bool = False


@dataclass
class Fleet:
    """The worker processes and what was done to them."""

    cli: Cli
    rng: random.Random
    api: TaskManager
    procs: list[Proc] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    next_pod: int = 0
    expected_exit: dict[int, set[int]] = field(default_factory=dict)
    timers: list[threading.Timer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, pod: str | None = None) -> Proc:
        if pod is None:
            pod = f"p{self.next_pod}"
            self.next_pod += 1
        p = Proc(self.cli.worker("--no-reload", pod=pod, env=WORKER_ENV), pod)
        self.procs.append(p)
        return p

    def registered(self) -> set[int]:
        return {w.pid for w in self.api.workers(status="active", limit=1000).items}

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None]

    def running(self) -> list[Proc]:
        return [p for p in self.alive() if not p.stopped]

    def thaw(self, p: Proc) -> None:
        """SIGCONT a frozen worker (from a timer thread: the submitter may be blocked meanwhile)."""
        with self.lock:
            if p.stopped and p.popen.poll() is None:
                os.kill(p.popen.pid, signal.SIGCONT)
            p.stopped = False

    def strike(self, forced: str | None = None) -> None:
        """One random blow to the fleet; keeps 2-4 workers alive."""
        # a worker already told to stop is left to drain: a second blow would change the exit
        # code it is expected to end with
        victims = [p for p in self.running() if p.popen.pid not in self.expected_exit]
        if not victims:
            return
        # aim at a worker that is running something: that is where a crash hurts
        busy = {w.pid for w in self.api.workers(status="active", limit=1000).items if w.running_tasks > 0}
        v = self.rng.choice([p for p in victims if p.popen.pid in busy] or victims)
        action = (
            forced
            or self.rng.choices(
                ["kill_same_pod", "kill_new_pod", "kill_alone", "stop", "stop_and_replace", "term", "term_twice"],
                weights=[4, 2, 1, 4, 1, 1, 1],
            )[0]
        )
        if action.startswith("term") and v.popen.pid not in self.registered():
            # before it registers, a worker has no signal handler yet (and nothing to drain)
            action = "kill_same_pod"
        if action.startswith("kill"):
            v.popen.send_signal(signal.SIGKILL)
            v.popen.wait(10)
            self.counts["kills"] += 1
            if action == "kill_same_pod":
                self.start(v.pod)
                self.counts["restarts"] += 1
            elif action == "kill_new_pod" or len(self.alive()) < 2:
                self.start()
                self.counts["restarts"] += 1
        elif action.startswith("stop"):
            # a frozen worker may hold SQLite's write lock and block the submitter: thaw it
            # from a timer thread, never from the loop that submits
            with self.lock:
                os.kill(v.popen.pid, signal.SIGSTOP)
                v.stopped = True
            timer = threading.Timer(self.rng.uniform(LEASE + 0.5, LEASE + 2.5), self.thaw, (v,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)
            self.counts["stops"] += 1
            if action == "stop_and_replace":
                # a VM paused while systemd elsewhere restarts its pod: it wakes up as a standby
                self.start(v.pod)
                self.counts["restarts"] += 1
        else:
            v.popen.send_signal(signal.SIGTERM)
            if action == "term_twice":
                time.sleep(0.05)
                v.popen.send_signal(signal.SIGTERM)
                # os._exit(1) unless already drained; a worker that drained within the 50 ms
                # is finalizing, and Python's finalization restores the default SIGTERM action
                self.expected_exit[v.popen.pid] = {0, 1, -signal.SIGTERM}
            else:
                self.expected_exit[v.popen.pid] = {0}
            self.counts["terms"] += 1
            self.start(v.pod)
            self.counts["restarts"] += 1
        if len(self.alive()) < 3 and self.rng.random() < 0.5:
            self.start()
            self.counts["restarts"] += 1

    def settle(self) -> None:
        """Thaw every frozen worker and make sure at least two healthy ones run."""
        for t in self.timers:
            t.cancel()
        for p in self.procs:
            self.thaw(p)
        while len(self.alive()) < 2:
            self.start()

    def stop_all(self) -> None:
        """SIGTERM every worker still alive; each must drain and exit 0."""
        live = self.alive()
        # a worker installs its signal handlers just before it registers: wait for its row
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {p.popen.pid for p in live} <= {w.pid for w in self.api.workers(limit=1000).items}:
                break
            time.sleep(0.1)
        for p in live:
            p.popen.send_signal(signal.SIGTERM)
        for p in live:
            code = p.popen.wait(30)
            assert code == 0, f"worker pod {p.pod} exited {code} on SIGTERM\n{self.cli.log_tail()}"
        for p in self.procs:
            want = self.expected_exit.get(p.popen.pid)
            if want is not None:
                assert p.popen.returncode in want, f"pod {p.pod} exited {p.popen.returncode}, expected {want}"


def submit_some(m: TaskManager, rng: random.Random, submitted: Counter[str]) -> None:
    kind = rng.choices(["quick", "slow", "flaky", "fanout"], weights=[5, 3, 2, 1])[0]
    opts: dict[str, Any] = {"timeout": 30, "max_retries": 3}
    if kind == "quick":
        m.submit_many([("quick", {}) for _ in range(rng.randint(1, 4))], **opts)
        submitted["quick"] += 1
    elif kind == "slow":
        m.submit("slow", {"secs": round(rng.uniform(0.5, 2.0), 2)}, **opts)
    elif kind == "flaky":
        m.submit("flaky", {"fail": rng.choice([0, 1, 2, 3])}, timeout=30)
    else:
        m.submit("fanout", {"n": rng.randint(2, 4), "stages": rng.randint(1, 2)}, **opts)
    submitted[kind] += 1


@pytest.fixture(params=WITH_POOLER)
def chaos_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Cli]]:
    gen = fresh_database(request.param, tmp_path)
    url = next(gen)
    c = Cli(tmp_path, url)
    try:
        yield request.param, c
    finally:
        c.close()
        for _ in gen:
            pass


@pytest.mark.timeout(int(SECONDS * 2 + 240))
def test_chaos__no_task_lost_none_run_twice_at_once_no_stale_write(
    chaos_cli: tuple[str, Cli], capsys: pytest.CaptureFixture[str]
) -> None:
    backend, cli = chaos_cli
    seconds = PER_BACKEND[backend]
    rng = random.Random(f"{SEED}-{backend}")
    cli.handler_file("chaos", HANDLERS)
    t0 = time.monotonic()
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers), reload=False)
    try:
        m.db_upgrade()
        cron_id = m.cron("tick", "* * * * * *", {}, max_retries=3, timeout=30)
        fleet = Fleet(cli, rng, m)
        for pod in ("a", "b", "c"):
            fleet.start(pod)
        submitted: Counter[str] = Counter()
        end = t0 + seconds
        next_strike = t0 + rng.uniform(1.0, 3.0)
        strikes = 0
        while (now := time.monotonic()) < end:
            if now >= next_strike:
                # even the shortest run freezes one worker and kills one; then chance decides
                fleet.strike(FIRST_STRIKES[strikes] if strikes < len(FIRST_STRIKES) else None)
                strikes += 1
                next_strike = now + rng.uniform(1.0, 3.0)
            submit_some(m, rng, submitted)
            time.sleep(rng.uniform(0.05, 0.3))
        fleet.settle()
        wait_drained(m, cli, timeout=90)
        fleet.stop_all()
        report = check_invariants(cli.db_url, cron_id)
    finally:
        m.close()
    c = fleet.counts
    with capsys.disabled():
        print(
            f"\nchaos: backend={backend} seed={SEED} tasks={report['tasks']} kills={c['kills']} "
            f"stops={c['stops']} terms={c['terms']} restarts={c['restarts']} recoveries={report['recoveries']} "
            f"stale_writes={stale_writes(cli)} cron_runs={report['cron_runs']} "
            f"seconds={time.monotonic() - t0:.1f}"
        )
    assert c["kills"] > 0 and c["stops"] > 0 and report["recoveries"] > 0


def stale_writes(cli: Cli) -> int:
    """Late writes of frozen or superseded workers that fencing refused (from the worker logs)."""
    return sum(p.read_text(errors="replace").count('"stale_write"') for p in cli.logs if p.exists())


def wait_drained(m: TaskManager, cli: Cli, timeout: float) -> None:
    """Poll until every async task is finished (the cron keeps going)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        open_ = m.query_tasks(limit=1, type="async", status=["pending", "running", "suspended", "failed", "timeout"])
        if open_.total == 0:
            return
        time.sleep(0.2)
    left = m.query_tasks(limit=20, type="async", status=["pending", "running", "suspended", "failed", "timeout"])
    raise AssertionError(
        f"{left.total} tasks not finished after the chaos: "
        f"{[(t.id, t.name, t.status.value, t.worker_id) for t in left.items]}\n{cli.log_tail()}"
    )


def check_invariants(db_url: str, cron_id: int) -> dict[str, int]:
    """Assert the invariants over the whole database; returns the figures of the summary."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            tasks = {int(r.id): r for r in conn.execute(sa.select(T)).all()}
            atts: dict[int, list[Any]] = defaultdict(list)
            for r in conn.execute(sa.select(A).order_by(A.c.task_id, A.c.attempt)).all():
                atts[int(r.task_id)].append(r)
            evs: dict[int, list[Any]] = defaultdict(list)
            for r in conn.execute(sa.select(E).order_by(E.c.id)).all():
                evs[int(r.task_id)].append(r)
    finally:
        engine.dispose()
    problems: list[str] = []
    interrupted = 0
    for tid, t in tasks.items():
        a = atts[tid]
        # statuses: async tasks finished, the cron waiting for its next occurrence
        if t.type == "cron":
            if t.status != "pending":
                problems.append(f"cron {tid} is {t.status} after the drain")
        elif t.status not in ("completed", "permanently_failed"):
            problems.append(f"task {tid} ({t.name}) is {t.status} after the drain")
        # attempt numbers 1..n, the task's counter at n; none left open once the fleet is gone
        if [x.attempt for x in a] != list(range(1, len(a) + 1)) or t.attempt != len(a):
            problems.append(f"task {tid}: attempt numbers {[x.attempt for x in a]} (task at {t.attempt})")
        open_ = [x.attempt for x in a if x.ended_at is None or x.outcome is None]
        if open_:
            problems.append(f"task {tid}: attempts {open_} still open")
        for prev, nxt in pairwise(a):
            if prev.ended_at is not None and nxt.started_at < prev.ended_at:
                problems.append(
                    f"task {tid}: attempt {nxt.attempt} started {nxt.started_at} before "
                    f"attempt {prev.attempt} ended {prev.ended_at}"
                )
        interrupted += sum(1 for x in a if x.outcome == "interrupted")
        problems += _check_event_order(tid, evs[tid])
        if t.type == "async":
            problems += _check_attempts_used(t, a)
        if t.status == "completed":
            done = [x for x in a if x.outcome == "completed"]
            if len(done) != 1 or done[0].attempt != len(a):
                problems.append(f"task {tid}: completed attempts {[x.attempt for x in done]} of {len(a)}")
                continue
            owner = done[0]
            # the stored result was computed by the handler of the attempt that owned the task
            if not isinstance(t.result, dict) or (t.result.get("w"), t.result.get("a")) != (
                owner.worker_id,
                owner.attempt,
            ):
                problems.append(f"task {tid}: result {t.result} not from owner {owner.worker_id}#{owner.attempt}")
            fin = [e for e in evs[tid] if e.event_type == "task_completed"]
            if len(fin) != 1 or (fin[0].worker_id, fin[0].attempt) != (owner.worker_id, owner.attempt):
                problems.append(
                    f"task {tid}: task_completed by {[(e.worker_id, e.attempt) for e in fin]}, "
                    f"attempt owned by {owner.worker_id}#{owner.attempt}"
                )
        if t.name == "fanout":
            resumes = Counter(int(e.stage) for e in evs[tid] if e.event_type == "task_resumed")
            twice = {s: n for s, n in resumes.items() if n != 1}
            if twice:
                problems.append(f"workflow {tid}: resumed {twice} times per stage")
            if t.status == "completed" and sorted(resumes) != list(range(1, int(t.payload["stages"]) + 1)):
                problems.append(f"workflow {tid}: resumes at stages {sorted(resumes)}")
            problems += _check_resumes_follow_children(t, tasks, evs)
    cron_runs = [x for x in atts[cron_id] if x.outcome == "completed"]
    scheduled = [
        e.metadata["next_run_time"]
        for e in evs[cron_id]
        if e.event_type == "task_status_changed" and e.metadata and "next_run_time" in e.metadata
    ]
    if len(scheduled) != len(cron_runs) or scheduled != sorted(set(scheduled)):
        problems.append(f"cron {cron_id}: {len(cron_runs)} completed runs scheduled {len(set(scheduled))} occurrences")
    seconds = [int(x.started_at.timestamp()) for x in cron_runs]
    # each run's next occurrence is the first whole second after it ended: one run per second at most
    if any(b <= a for a, b in pairwise(seconds)):
        problems.append(f"cron {cron_id}: two completed runs for one occurrence: {seconds}")
    assert not problems, "\n".join(problems[:40])
    recoveries = sum(1 for es in evs.values() for e in es if e.event_type == "task_recovered")
    assert interrupted == recoveries, f"{interrupted} interrupted attempts for {recoveries} task_recovered events"
    return {"tasks": len(tasks), "recoveries": recoveries, "cron_runs": len(cron_runs)}


def _check_event_order(tid: int, events: list[Any]) -> list[str]:
    """In commit order (event ids), per task: attempt n+1 is claimed only after attempt n was
    closed, and every progress or checkpoint was written while its attempt was open, by the
    worker that claimed it (a stale worker's late write would land after the close)."""
    closing = {
        "task_completed",
        "task_failed",
        "task_timed_out",
        "task_recovered",
        "task_subtasks_created",
        "task_suspended",
        "task_paused",
        "task_status_changed",
    }
    problems: list[str] = []
    open_attempt: tuple[int, str] | None = None  # (attempt, worker) of the attempt in progress
    for e in events:
        if e.event_type == "task_started":
            if open_attempt is not None:
                problems.append(f"task {tid}: attempt {e.attempt} claimed while attempt {open_attempt[0]} was open")
            open_attempt = (int(e.attempt), str(e.worker_id))
        elif e.event_type in ("task_progress", "task_checkpoint"):
            if open_attempt != (e.attempt, e.worker_id):
                problems.append(
                    f"task {tid}: {e.event_type} #{e.id} by {e.worker_id}#{e.attempt} "
                    f"while the open attempt was {open_attempt}"
                )
        elif e.event_type in closing and open_attempt is not None and e.attempt == open_attempt[0]:
            open_attempt = None
    return problems


def _check_attempts_used(t: Any, atts: list[Any]) -> list[str]:
    """Recovery never uses up an attempt: only failed and timed-out attempts count."""
    used = sum(1 for x in atts if x.outcome in ("failed", "timeout"))
    if t.status == "completed" and t.retry_count != used:
        return [f"task {t.id}: retry_count {t.retry_count} after {used} failed or timed-out attempts"]
    if t.status == "permanently_failed" and used != t.max_retries:
        return [f"task {t.id}: permanently failed after {used} of {t.max_retries} attempts"]
    return []


def _check_resumes_follow_children(t: Any, tasks: dict[int, Any], evs: dict[int, list[Any]]) -> list[str]:
    """A parent resumes into stage s only after every child of stage s-1 finished (commit order)."""
    problems: list[str] = []
    finished = ("task_completed", "task_permanently_failed")
    for r in (e for e in evs[int(t.id)] if e.event_type == "task_resumed"):
        kids = [k for k in tasks.values() if k.parent_id == t.id and k.parent_stage == int(r.stage) - 1]
        if not kids:
            problems.append(f"workflow {t.id}: resumed into stage {r.stage} without children")
        for k in kids:
            done = [e.id for e in evs[int(k.id)] if e.event_type in finished]
            if not done or done[0] > r.id:
                problems.append(f"workflow {t.id}: resumed into stage {r.stage} before child {k.id} finished")
    return problems
