"""`flowd worker --metrics-port`: Prometheus metrics and /healthz scraped over HTTP from real workers."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Cli

HANDLERS = """
import time
from pathlib import Path
from flowd import handler

@handler("ok")
def ok(task):
    return {"ok": True}

@handler("boom", max_retries=2)
def boom(task):
    raise RuntimeError("no luck")

@handler("slow", timeout=0.2, max_retries=1)
def slow(task):
    time.sleep(0.6)

@handler("hold", timeout=60)
def hold(task):
    deadline = time.monotonic() + 50
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(cli: Cli, proc: subprocess.Popen[bytes]) -> str:
    """The base URL the worker logged when it started serving (it was given port 0)."""
    log = cli.logs[cli.workers.index(proc)]

    def listening() -> str | None:
        for raw in log.read_text(errors="replace").splitlines():
            if raw.startswith("{") and (line := json.loads(raw)).get("event") == "metrics_listening":
                return f"http://{line['host']}:{line['port']}"
        return None

    url: str = cli.wait_until(listening, 20, "metrics_listening in the worker log")
    return url


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def scrape(base: str) -> Samples:
    code, ctype, body = get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def test_metrics__count_claims_outcomes_retries_and_queue_depth(cli: Cli) -> None:
    cli.handler_file("handlers", HANDLERS)
    worker = cli.worker("--metrics-port", "0")
    base = metrics_url(cli, worker)
    ok_ids = [cli.submit("ok") for _ in range(3)]
    boom = cli.submit("boom")
    slow = cli.submit("slow")
    for tid in ok_ids:
        cli.wait_status(tid, "completed")
    cli.wait_status(boom, "permanently_failed")
    cli.wait_status(slow, "permanently_failed")

    def caught_up() -> Samples | None:
        s = scrape(base)
        done = value(s, "flowd_tasks_failed_total", name="boom") == 2
        return s if done and value(s, "flowd_queue_depth", name="slow", status="pending") == 0 else None

    s: Samples = cli.wait_until(caught_up, 20, "metrics caught up")
    assert value(s, "flowd_tasks_claimed_total", name="ok") == 3
    assert value(s, "flowd_tasks_completed_total", name="ok") == 3
    assert value(s, "flowd_tasks_claimed_total", name="boom") == 2
    assert value(s, "flowd_tasks_retried_total", name="boom") == 1  # 2 attempts: one retry, then the end
    assert value(s, "flowd_tasks_timed_out_total", name="slow") == 1
    assert value(s, "flowd_tasks_retried_total", name="slow") is None  # max_retries=1: no retry
    assert value(s, "flowd_attempt_duration_seconds_count", name="ok", outcome="completed") == 3
    assert value(s, "flowd_attempt_duration_seconds_count", name="boom", outcome="failed") == 2
    timed = value(s, "flowd_attempt_duration_seconds_sum", name="slow", outcome="timed_out")
    assert timed is not None and timed >= 0.2
    # the queue is what is left to do: finished tasks are not in it, an emptied queue reads 0
    assert value(s, "flowd_queue_depth", name="ok", status="completed") is None
    assert value(s, "flowd_queue_depth", name="boom", status="permanently_failed") is None
    assert value(s, "flowd_queue_depth", name="ok", status="pending") == 0
    claims = value(s, "flowd_claim_duration_seconds_count")
    assert claims is not None and claims >= 5
    assert value(s, "flowd_running_attempts") == 0
    assert value(s, "flowd_database_up") == 1
    age = value(s, "flowd_worker_lease_age_seconds")
    assert age is not None and 0 <= age < 2  # renewed every 0.3 s (FAST_ENV)

    # a running attempt shows as running, and in the queue depth once the cache refreshes
    hold = cli.submit("hold")
    cli.wait_until(lambda: value(scrape(base), "flowd_running_attempts") == 1, 20, "running_attempts == 1")
    cli.wait_until(
        lambda: value(scrape(base), "flowd_queue_depth", name="hold", status="running") == 1, 20, "depth refresh"
    )
    (cli.tmp / "release").touch()
    cli.wait_status(hold, "completed")

    code, _, body = get(base + "/nope")
    assert code == 404 and "/metrics" in body
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_healthz__200_while_holding_the_lease_503_once_superseded(cli: Cli) -> None:
    cli.handler_file("handlers", HANDLERS)
    first = cli.worker("--metrics-port", "0", pod="a")
    base = metrics_url(cli, first)
    cli.wait_until(lambda: get(base + "/healthz")[0] == 200, 20, "healthz 200")
    hold = cli.submit("hold")
    cli.wait_status(hold, "running")

    # a second instance of pod "a" supersedes the first and recovers its running task at once
    second = cli.worker("--metrics-port", "0", pod="a")
    base2 = metrics_url(cli, second)
    _, _, body = cli.wait_until(lambda: (r := get(base + "/healthz"))[0] == 503 and r, 20, "healthz 503")
    assert body.startswith("unhealthy")
    assert get(base2 + "/healthz")[0] == 200
    s = scrape(base2)
    assert value(s, "flowd_tasks_recovered_total", name="hold") == 1
    assert value(scrape(base), "flowd_worker_healthy") == 0

    (cli.tmp / "release").touch()
    cli.wait_status(hold, "completed")


def test_healthz__worker_without_pod_is_healthy_while_running(cli: Cli) -> None:
    cli.handler_file("handlers", HANDLERS)
    worker = cli.worker("--metrics-port", "0", "--metrics-host", "127.0.0.1", pod=None)
    base = metrics_url(cli, worker)
    _, _, body = cli.wait_until(lambda: (r := get(base + "/healthz"))[0] == 200 and r, 20, "healthz 200")
    assert body.startswith("ok ")
    s = scrape(base)
    assert value(s, "flowd_worker_lease_age_seconds") is None  # no pod id, no lease
    info: dict[str, Any] = {dict(k[1]).get("pod_id"): v for k, v in s.items() if k[0] == "flowd_worker_info"}
    assert info == {"": 1.0}


def test_metrics__port_in_use_is_one_clear_error(cli: Cli) -> None:
    import socket

    cli.handler_file("handlers", HANDLERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = cli.run("worker", "--metrics-port", str(port), check=False, timeout=30)
    assert p.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
