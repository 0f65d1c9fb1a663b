"""A fleet past one server's connection budget: worker processes through PgBouncer (transaction
mode, strict startup parameters), and a worker started before its database exists.

FLOWD_TEST_FLEET_WORKERS sets the fleet's size (20 by default: a 2-core machine starts 60
Python processes in about a minute; `flowd bench --workers 60` is the full-size run).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from flowd.manager import TaskManager
from tests import pgbouncer
from tests.conftest import fresh_database, server_url
from tests.e2e.conftest import Cli

FLEET = int(os.environ.get("FLOWD_TEST_FLEET_WORKERS", "20"))
TASKS = 600
CLI_TIMEOUT = 120
# the suite's sub-second leases are for one or two workers: dozens of processes on a
# couple of cores need the margins a production fleet has
FLEET_ENV = {
    "FLOWD_WORKER_HEARTBEAT_INTERVAL": "2",
    "FLOWD_WORKER_HEARTBEAT_TIMEOUT": "30",
    "FLOWD_TASK_HEARTBEAT_INTERVAL": "2",
    "FLOWD_TASK_HEARTBEAT_TIMEOUT": "30",
}

WORK = """
import time
from flowd import handler

@handler("work", max_retries=1)
def work(task):
    time.sleep(0.02)
    return {"i": task.payload["i"], "worker": task.worker_id}
"""


def _direct(sql: str, *args: object) -> list[tuple[object, ...]]:
    conninfo = sa.make_url(server_url("postgres") or "").set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as c:
        return list(c.execute(sql, args).fetchall())


class Operator(threading.Thread):
    """Runs CLI commands in a loop while the fleet works: each must answer, and quickly."""

    def __init__(self, cli: Cli, database: str) -> None:
        super().__init__(daemon=True)
        self.cli, self.database = cli, database
        self.stop = threading.Event()
        self.calls: list[tuple[str, int, float]] = []
        self.peak_server_connections = 0

    def run(self) -> None:
        commands = [("workers", "--json"), ("list", "--status", "running", "--limit", "5", "--json"), ("doctor",)]
        i = 0
        while not self.stop.is_set():
            args = commands[i % len(commands)]
            t0 = time.monotonic()
            try:
                rc = self.cli.run(*args, check=False, timeout=CLI_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            self.calls.append((" ".join(args), rc, time.monotonic() - t0))
            [(n,)] = _direct("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", self.database)
            self.peak_server_connections = max(self.peak_server_connections, int(str(n)))
            i += 1


@pytest.mark.timeout(420)
def test_fleet_through_pgbouncer__every_task_completes_once_and_the_cli_answers_throughout(tmp_path: Path) -> None:
    gen = fresh_database("pgbouncer", tmp_path, migrated=True)
    url = next(gen)
    database = sa.make_url(url).database or ""
    direct = sa.make_url(server_url("postgres") or "").set(database=database).render_as_string(hide_password=False)
    cli = Cli(tmp_path, url)
    m = TaskManager(db_url=url, handlers_dir=str(cli.handlers), reload=False)
    try:
        cli.handler_file("work", WORK)
        # the operator's commands run from the fleet's start (when a fleet used to take every
        # connection the server had) to its end
        operator = Operator(cli, database)
        operator.start()
        for i in range(FLEET):
            # half the fleet LISTENs on a direct connection, half polls (no direct URL)
            env = {"FLOWD_POLL_INTERVAL": "0.5", **FLEET_ENV}
            if i % 2 == 0:
                env["FLOWD_DB_LISTEN_URL"] = direct
            cli.worker(pod=f"p{i}", env=env)
        cli.wait_until(
            lambda: len([w for w in cli.json("workers")["items"] if w["status"] == "active"]) >= FLEET,
            timeout=240,
            what=f"{FLEET} workers registered",
        )
        t0 = time.monotonic()
        ids = m.submit_many([("work", {"i": i}) for i in range(TASKS)])
        cli.wait_until(
            lambda: m.query_tasks(status=["completed"], limit=1).total >= TASKS, timeout=180, what="every task done"
        )
        elapsed = time.monotonic() - t0
        cli.wait_until(lambda: len(operator.calls) >= 6, timeout=120, what="six operator commands")
        operator.stop.set()
        operator.join(90)

        conninfo = sa.make_url(direct).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo) as c:
            attempts = c.execute(
                "SELECT task_id, count(*), min(worker_id) FROM flowd_task_attempts GROUP BY task_id"
            ).fetchall()
            statuses = dict(c.execute("SELECT status, count(*) FROM flowd_tasks GROUP BY status").fetchall())
            retried = c.execute("SELECT count(*) FROM flowd_tasks WHERE retry_count > 0").fetchone()
            bad_events = c.execute(
                "SELECT event_type, count(*) FROM flowd_task_events WHERE event_type IN "
                "('task_failed', 'task_timed_out', 'task_recovered', 'task_permanently_failed', "
                "'task_retry_scheduled') GROUP BY event_type"
            ).fetchall()
        # each task completed exactly once, with one attempt, nothing recorded as failed
        assert statuses == {"completed": TASKS}
        assert sorted(a[0] for a in attempts) == sorted(ids) and all(a[1] == 1 for a in attempts)
        assert retried == (0,) and bad_events == []
        # the operators were never locked out: every command answered (a slow one is the CPU
        # of a couple of cores starting the fleet's processes, not a connection refused)
        assert operator.calls and all(rc == 0 for _, rc, _ in operator.calls), operator.calls
        # the server saw the pooler's few connections, plus the listeners on direct connections
        listeners = (FLEET + 1) // 2
        assert operator.peak_server_connections <= pgbouncer.POOL_SIZE + listeners + 2
        logs = [p.read_text(errors="replace") for p in cli.logs]
        for i, text in enumerate(logs):
            assert "Traceback" not in text and "prepared statement" not in text, text[-2000:]
            assert "unsupported startup parameter" not in text
            # a worker without a direct URL says once that it polls
            assert text.count('"listen_unavailable"') == (0 if i % 2 == 0 else 1), text[-2000:]
        per_worker: dict[str, int] = {}
        for _, _, worker in attempts:
            per_worker[str(worker)] = per_worker.get(str(worker), 0) + 1
        counts = [per_worker.get(w, 0) for w in per_worker] + [0] * (FLEET - len(per_worker))
        print(
            f"\nfleet: {FLEET} workers through PgBouncer, {TASKS} tasks in {elapsed:.1f}s; claims per worker "
            f"min/median/max {min(counts)}/{statistics.median(counts)}/{max(counts)}; "
            f"{len(operator.calls)} CLI calls, slowest {max(s for _, _, s in operator.calls):.2f}s; "
            f"server connections at most {operator.peak_server_connections}"
        )
    finally:
        m.close()
        cli.close()
        for _ in gen:
            pass


def test_worker_started_before_its_database__waits_with_one_line_then_serves(tmp_path: Path) -> None:
    base = server_url("postgres")
    if not base:
        pytest.skip("postgres: set FLOWD_TEST_POSTGRES_URL to run")
    name = "flowd_t_" + uuid.uuid4().hex[:12]
    url = sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    cli = Cli(tmp_path, url)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        cli.handler_file("work", WORK)
        worker = cli.worker(pod="a")
        log = cli.logs[0]
        said = '"database_unavailable_at_start"'
        cli.wait_until(lambda: said in log.read_text(), timeout=60, what="the first report")
        # it keeps trying, quietly: a few tries later still one line and no traceback
        time.sleep(4)
        text = log.read_text()
        assert worker.poll() is None, text
        assert text.count('"database_unavailable_at_start"') == 1 and "Traceback" not in text, text
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        cli.run("db", "upgrade")
        tid = cli.submit("work", {"i": 1})
        assert cli.wait_status(tid, "completed", timeout=90)["status"] == "completed"
        assert "Traceback" not in log.read_text()
    finally:
        cli.close()
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_bench__through_pgbouncer_reports_claims_per_worker_and_server_cpu(tmp_path: Path) -> None:
    import json
    import sys

    base = server_url("postgres")
    if not base:
        pytest.skip("postgres: set FLOWD_TEST_POSTGRES_URL to run")
    pooled = pgbouncer.pooled_url(base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    args = ["--db", pooled, "--listen-db", base, "--workers", "3", "--tasks", "90", "--handler", "sleep:5"]
    p = subprocess.run(
        [sys.executable, "-m", "flowd", "bench", *args, "--skip", "latency,single", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    claims = doc["claims_per_worker"]
    # the fleet is up before the work arrives: every figure counts all three workers
    assert 0 <= claims["min"] <= claims["median"] <= claims["max"] <= 90
    # the server runs here: its backends' CPU is measured (through the pooler: its connections)
    assert isinstance(doc["server_idle_cpu_percent"], float) and doc["server_idle_cpu_percent"] >= 0
    assert isinstance(doc["fleet_idle_cpu_percent"], float)
    assert set(doc["submit_cpu_ms"]) == {"fleet", "server"}
    assert all(isinstance(v, float) and v >= 0 for v in doc["submit_cpu_ms"].values())
