"""One benchmark run: a fresh schema, bulk and single enqueue, real `flowd worker` processes.

Every figure comes from the database rows the workers wrote (attempt start and end times),
not from the bench's own clock, so worker start-up is not counted as processing time.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowd.clock import utcnow
from flowd.errors import BadInput, FlowdError
from flowd.manager import TaskManager
from flowd.store import bench as bench_store

PHASES = ("latency", "single")
HANDLER = "bench"
# one-at-a-time samples: enough for a p99, short enough for `make bench`
LATENCY_SAMPLES = 200
SINGLE_MAX = 1000
# seconds the idle fleet is watched; submits whose CPU cost is measured on the idle fleet
IDLE_WINDOW = 3.0
SUBMIT_COST_SAMPLES = 20

# update(what, done, total): a phase's progress (the CLI draws it)
Update = Callable[[str, int, int | None], None]


class BenchFailed(FlowdError):
    """A worker died or the tasks did not finish in time."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run; `db_url` None means a temporary SQLite file."""

    db_url: str | None = None
    tasks: int = 10_000
    workers: int = 1
    concurrency: int = 10
    payload_bytes: int = 0
    handler: str = "noop"
    history: int = 0
    skip: frozenset[str] = field(default_factory=frozenset)
    timeout: float = 600.0
    # a direct server URL for the workers' LISTEN when `db_url` goes through a pooler
    listen_db: str | None = None


def standard_set(env: dict[str, str]) -> list[BenchConfig]:
    """`make bench`: SQLite with one worker; PostgreSQL and MySQL with two when their URLs are set."""
    # no-op tasks finish at once: 100 in flight per worker keeps every write a large batch
    runs = [BenchConfig(tasks=20_000, workers=1, concurrency=100)]
    for var in ("FLOWD_TEST_POSTGRES_URL", "FLOWD_TEST_MYSQL_URL"):
        if env.get(var):
            runs.append(BenchConfig(db_url=env[var], tasks=20_000, workers=2, concurrency=100))
    return runs


def parse_handler(text: str) -> tuple[str, float]:
    """`noop`, `sleep:MS` or `cpu:MS` → (kind, milliseconds)."""
    kind, _, ms = text.partition(":")
    if kind == "noop" and not ms:
        return "noop", 0.0
    if kind in ("sleep", "cpu"):
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if value >= 0:
            return kind, value
    raise BadInput(f"bad --handler {text!r}: use noop, sleep:MS or cpu:MS (e.g. sleep:5)")


def parse_skip(text: str | None) -> frozenset[str]:
    parts = frozenset(p.strip() for p in (text or "").split(",") if p.strip())
    unknown = parts - set(PHASES)
    if unknown:
        raise BadInput(f"bad --skip {','.join(sorted(unknown))}: use a comma list of {', '.join(PHASES)}")
    return parts


def check(cfg: BenchConfig) -> None:
    """Refuse a configuration before anything is created."""
    parse_handler(cfg.handler)
    for name, value, low in (
        ("--tasks", cfg.tasks, 1),
        ("--workers", cfg.workers, 1),
        ("--concurrency", cfg.concurrency, 1),
        ("--payload-bytes", cfg.payload_bytes, 0),
        ("--history", cfg.history, 0),
    ):
        if value < low:
            raise BadInput(f"{name} must be at least {low}, not {value}")


def handler_source(kind: str, ms: float) -> str:
    """The plugin module the bench workers load."""
    body = {
        "noop": "return None",
        "sleep": f"time.sleep({ms / 1000.0!r})\n    return None",
        # busy-loop on the CPU for MS milliseconds (holds the GIL like real Python work)
        "cpu": f"end = time.perf_counter() + {ms / 1000.0!r}\n    while time.perf_counter() < end:\n        pass",
    }[kind]
    return textwrap.dedent(
        """\
        import time

        from flowd import handler


        @handler("{name}", max_retries=1)
        def bench(task):
            {body}
        """
    ).format(name=HANDLER, body=body)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100.0 * len(s) + 0.5) - 1))
    return s[k]


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_seconds(pids: list[int]) -> float:
    """CPU time so far of these PostgreSQL server processes (those still alive)."""
    total = 0.0
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
        except OSError:
            continue
        total += _cpu_seconds(pid) or 0.0
    return total


@contextlib.contextmanager
def _database(cfg: BenchConfig, tmp: Path) -> Iterator[tuple[str, str]]:
    """(url, backend) of a fresh database; a server database is dropped afterwards."""
    if cfg.db_url is None or cfg.db_url.startswith("sqlite"):
        if cfg.db_url not in (None, "sqlite://", "sqlite:///:memory:") and Path(cfg.db_url[10:]).exists():
            raise BadInput(f"{cfg.db_url} exists: the bench needs a fresh database (omit --db for a temporary file)")
        url = cfg.db_url if cfg.db_url and cfg.db_url.startswith("sqlite:///") else f"sqlite:///{tmp / 'bench.db'}"
        yield url, "sqlite"
        return
    url = bench_store.create_scratch_database(cfg.db_url)
    backend = url.split(":", 1)[0].split("+", 1)[0]
    try:
        yield url, backend
    finally:
        bench_store.drop_database(url)


class Fleet:
    """The bench's `flowd worker` processes."""

    def __init__(
        self, url: str, plugins: Path, tmp: Path, workers: int, concurrency: int, listen_url: str | None = None
    ) -> None:
        drop = ("FLOWD_DB_URL", "FLOWD_HANDLERS_DIR", "FLOWD_DB_LISTEN_URL")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if listen_url:
            env["FLOWD_DB_LISTEN_URL"] = listen_url
        # the URL (and its password) goes through the environment, never argv: a command
        # line is visible to every local user in `ps`, a process's environment only to its owner
        env["FLOWD_DB_URL"] = url
        # per-task info lines would measure the log sink, not flowd; warnings still show
        env.setdefault("FLOWD_LOG_LEVEL", "warning")
        self.logs = [tmp / f"worker{i}.log" for i in range(workers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, log in enumerate(self.logs):
            cmd = [sys.executable, "-m", "flowd", "worker", "--handlers", str(plugins)]
            cmd += ["--no-reload", "--concurrency", str(concurrency), "--pod-id", f"bench-{i}"]
            with open(log, "wb") as fh:
                self.procs.append(
                    subprocess.Popen(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
                )

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise BenchFailed(f"worker {p.pid} exited with {p.returncode}: {tail.strip()}")

    def peak_rss_mb(self) -> float | None:
        peaks = [_proc_status_kb(p.pid, "VmHWM") for p in self.procs]
        known = [k for k in peaks if k is not None]
        return round(max(known) / 1024.0, 1) if known else None

    def cpu_seconds(self) -> list[float | None]:
        return [_cpu_seconds(p.pid) for p in self.procs]

    def idle_cpu(self, seconds: float, server_pids: list[int]) -> tuple[float | None, float | None, float | None]:
        """Over `seconds` with nothing to do, in % of one core: (the busiest worker, the whole
        fleet, the server backends `server_pids`; None without any)."""
        before, server_before = self.cpu_seconds(), _server_cpu_seconds(server_pids)
        time.sleep(seconds)
        after, server_after = self.cpu_seconds(), _server_cpu_seconds(server_pids)
        used = [a - b for a, b in zip(after, before, strict=True) if a is not None and b is not None]
        if not used:
            return None, None, None
        server = round((server_after - server_before) / seconds * 100.0, 2) if server_pids else None
        return round(max(used) / seconds * 100.0, 2), round(sum(used) / seconds * 100.0, 2), server

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _wait_done(m: TaskManager, fleet: Fleet, after_id: int, total: int, deadline: float, update: Update) -> None:
    """Poll the database until every task with id > after_id completed.

    The bench shares the machine with what it measures: it asks a cheap question (one
    index probe) every 50 ms and counts what is left (a scan of the new tasks) once a second
    for the progress bar.
    """
    next_count = 0.0
    while True:
        with m.db.read() as conn:
            busy = bench_store.any_unfinished_after(conn, after_id)
            if not busy or time.monotonic() >= next_count:
                left = bench_store.unfinished_after(conn, after_id)
                update("processing", total - left, total)
                next_count = time.monotonic() + 1.0
        if not busy:
            return
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailed(f"{left} of {total} tasks not completed before the bench timeout")
        time.sleep(0.05)


def _wait_registered(m: TaskManager, fleet: Fleet, workers: int, deadline: float, say: Update) -> None:
    """Poll the worker registry until all `workers` have registered (their start-up is done)."""
    while True:
        live = m.workers("active", limit=1).total
        say("fleet start", live, workers)
        if live >= workers:
            return
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailed(f"{live} of {workers} workers registered before the bench timeout")
        time.sleep(0.2)


def run(cfg: BenchConfig, update: Update | None = None) -> dict[str, Any]:
    """Run the benchmark and return its figures (one JSON-ready document)."""
    check(cfg)
    say: Update = update or (lambda what, done, total: None)
    kind, ms = parse_handler(cfg.handler)
    payload = {"pad": "x" * cfg.payload_bytes} if cfg.payload_bytes else {}
    deadline = time.monotonic() + cfg.timeout
    with tempfile.TemporaryDirectory(prefix="flowd-bench-") as tmpdir, _database(cfg, Path(tmpdir)) as (url, backend):
        tmp = Path(tmpdir)
        plugins = tmp / "handlers"
        plugins.mkdir()
        (plugins / "bench_handler.py").write_text(handler_source(kind, ms))
        m = TaskManager(db_url=url, handlers_dir=plugins, reload=False)
        try:
            m.db.ensure_schema()
            if cfg.history:
                say("history", 0, cfg.history)
                with m.db.write() as conn:
                    bench_store.insert_history(
                        conn, cfg.history, HANDLER, payload, utcnow(), lambda n: say("history", n, cfg.history)
                    )
            bench_store.settle(m.db.engine)  # with or without history: both runs start alike
            with m.db.read() as conn:
                first_id = bench_store.max_task_id(conn)

            listen_url = bench_store.same_database_on(cfg.listen_db, url) if cfg.listen_db else None
            fleet = Fleet(url, plugins, tmp, cfg.workers, cfg.concurrency, listen_url)
            try:
                # the whole fleet is up and idle before the work arrives: every worker has the
                # same chance at it (a queue filled before the start goes to the first-started)
                _wait_registered(m, fleet, cfg.workers, deadline, say)
                say("bulk enqueue", 0, cfg.tasks)
                t0 = time.perf_counter()
                ids = m.submit_many([(HANDLER, payload)] * cfg.tasks)
                bulk_s = time.perf_counter() - t0
                last_id = max(ids)
                _wait_done(m, fleet, first_id, cfg.tasks, deadline, say)
                with m.db.read() as conn:
                    n, first, last = bench_store.attempt_span(conn, first_id, last_id)
                    per_worker = bench_store.attempts_per_worker(conn, first_id, last_id)
                # every worker counts, those that claimed nothing too
                per_worker += [0] * max(0, cfg.workers - len(per_worker))
                span = (last - first).total_seconds() if first and last else 0.0
                # millisecond timestamps: a span under 1 ms is reported as 1 ms
                process_per_s = n / max(span, 0.001)

                single_per_s = None
                if "single" not in cfg.skip:
                    count = min(cfg.tasks, SINGLE_MAX)
                    say("single enqueue", 0, count)
                    t0 = time.perf_counter()
                    for _ in range(count):
                        m.submit(HANDLER, payload)
                    single_per_s = count / (time.perf_counter() - t0)
                    _wait_done(m, fleet, last_id, count, deadline, say)

                with m.db.read() as conn:
                    server_pids = bench_store.server_backend_pids(conn) if bench_store.is_local_postgres(url) else []
                idle_cpu, fleet_idle_cpu, server_idle_cpu = fleet.idle_cpu(IDLE_WINDOW, server_pids)
                submit_cost = _submit_cost(m, fleet, server_pids, payload, deadline, say)

                latency: dict[str, float | None] = {"p50": None, "p95": None, "p99": None}
                if "latency" not in cfg.skip:
                    samples = _latency(m, fleet, min(cfg.tasks, LATENCY_SAMPLES), payload, deadline, say)
                    latency = {f"p{p}": _round(percentile(samples, p)) for p in (50, 95, 99)}
                fleet.check_alive()
                rss = fleet.peak_rss_mb()
            finally:
                fleet.stop()
        finally:
            m.close()
    return {
        "backend": backend,
        "tasks": cfg.tasks,
        "workers": cfg.workers,
        "concurrency": cfg.concurrency,
        "handler": cfg.handler,
        "payload_bytes": cfg.payload_bytes,
        "history": cfg.history,
        "enqueue_bulk_per_s": round(cfg.tasks / max(bulk_s, 1e-9), 1),
        "enqueue_single_per_s": round(single_per_s, 1) if single_per_s is not None else None,
        "process_per_s": round(process_per_s, 1),
        "latency_ms": latency,
        "worker_rss_mb": rss,
        "worker_idle_cpu_percent": idle_cpu,
        "fleet_idle_cpu_percent": fleet_idle_cpu,
        "server_idle_cpu_percent": server_idle_cpu,
        "claims_per_worker": {
            "min": min(per_worker),
            "median": statistics.median(per_worker),
            "max": max(per_worker),
        },
        "submit_cpu_ms": submit_cost,
    }


def run_median(cfg: BenchConfig, runs: int, update: Update | None = None) -> dict[str, Any]:
    """Run the benchmark `runs` times, each on a fresh database; every figure is the median.

    The machine is usually shared, so one run says little: the median of three is what the
    README reports.
    """
    if runs < 1:
        raise BadInput(f"--runs must be at least 1, not {runs}")
    docs = [run(cfg, update) for _ in range(runs)]
    out = dict(docs[0])
    for key, value in docs[0].items():
        if isinstance(value, float):
            out[key] = _median([d[key] for d in docs])
        elif isinstance(value, dict):
            out[key] = {k: _median([d[key][k] for d in docs]) for k in value}
    out["runs"] = runs
    return out


def _median(values: list[Any]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return _round(statistics.median(known)) if known else None


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _latency(
    m: TaskManager, fleet: Fleet, count: int, payload: dict[str, Any], deadline: float, say: Update
) -> list[float]:
    """Submit `count` tasks one at a time to an idle fleet; each waits until the last one started."""
    ids = []
    for i in range(count):
        say("latency", i, count)
        # a random pause so submissions do not fall in step with the workers' polling
        time.sleep(random.uniform(0.0, 0.01))
        tid = m.submit(HANDLER, payload)
        ids.append(tid)
        while True:
            with m.db.read() as conn:
                if bench_store.started(conn, tid):
                    break
            fleet.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailed(f"task {tid} did not start before the bench timeout")
            time.sleep(0.002)
    with m.db.read() as conn:
        return bench_store.start_latencies_ms(conn, ids)


def _submit_cost(
    m: TaskManager, fleet: Fleet, server_pids: list[int], payload: dict[str, Any], deadline: float, say: Update
) -> dict[str, float | None]:
    """CPU milliseconds one submit costs an idle fleet: the workers together and the server's
    backends (None when the server is not on this machine), beyond their idle use.

    Submits one task at a time, each after the previous one started, with a pause between
    so the fleet is idle again; the idle use over the same time is subtracted. On PostgreSQL
    every idle listener wakes on a submit's NOTIFY: this is what the fleet pays for it.
    """
    gap = 0.2
    window = SUBMIT_COST_SAMPLES * gap
    _, fleet_idle, server_idle = fleet.idle_cpu(window, server_pids)
    before, server_before = fleet.cpu_seconds(), _server_cpu_seconds(server_pids)
    t0 = time.monotonic()
    for i in range(SUBMIT_COST_SAMPLES):
        say("submit cost", i, SUBMIT_COST_SAMPLES)
        tid = m.submit(HANDLER, payload)
        while True:
            with m.db.read() as conn:
                if bench_store.started(conn, tid):
                    break
            fleet.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailed(f"task {tid} did not start before the bench timeout")
            time.sleep(0.005)
        time.sleep(gap)
    elapsed = time.monotonic() - t0
    after, server_after = fleet.cpu_seconds(), _server_cpu_seconds(server_pids)
    used = sum(a - b for a, b in zip(after, before, strict=True) if a is not None and b is not None)

    def per_submit(total: float, idle_percent: float | None) -> float | None:
        if idle_percent is None:
            return None
        extra = total - idle_percent / 100.0 * elapsed
        return round(max(extra, 0.0) / SUBMIT_COST_SAMPLES * 1000.0, 2)

    return {
        "fleet": per_submit(used, fleet_idle),
        "server": per_submit(server_after - server_before, server_idle) if server_pids else None,
    }
