"""Prometheus metrics and a health check for one worker, served over HTTP (`--metrics-port`).

The worker reports events through its `Observer` hook (counters and histograms, cheap
in-memory updates on the loop thread). Gauges that need the database (queue depth) are
read at scrape time with one grouped query, cached for `refresh` seconds, so a storm of
scrapes costs one query per interval and an unscraped worker costs none. The queue depth
is the database's, the same on every worker: a fleet aggregates it with max(), not sum(). The only
module that imports prometheus_client; its registry is private to each server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowd.clock import utcnow
from flowd.engine import ops
from flowd.engine.worker import Observer, Worker
from flowd.errors import DatabaseUnavailable, FlowdError
from flowd.logging import get_logger
from flowd.model import QUEUE_STATUSES

log = get_logger("flowd.metrics")

# Attempt durations span milliseconds (a quick handler) to hours (a long workflow stage).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
# A claim is one short transaction: these resolve lock waits and slow disks.
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"))


class WorkerMetrics(Observer):
    """Counters and histograms fed by the worker, plus gauges read from it at scrape time."""

    def __init__(self, worker: Worker, *, refresh: float = 5.0, clock: Callable[[], datetime] = utcnow) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def tasks(what: str, doc: str) -> Counter:
            return Counter(f"flowd_tasks_{what}", doc, ["name"], registry=r)

        self.claimed_total = tasks("claimed", "Attempts this worker claimed.")
        self.completed_total = tasks("completed", "Attempts this worker completed successfully.")
        self.failed_total = tasks("failed", "Attempts that raised (or returned an unusable result).")
        self.timed_out_total = tasks("timed_out", "Attempts that exceeded their timeout.")
        self.retried_total = tasks("retried", "Failed or timed-out attempts that scheduled a retry.")
        self.recovered_total = tasks("recovered", "Tasks of dead or superseded workers sent back to pending.")
        self.attempt_seconds = Histogram(
            "flowd_attempt_duration_seconds",
            "Attempt duration from claim to outcome, by name and outcome.",
            ["name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.claim_seconds = Histogram(
            "flowd_claim_duration_seconds",
            "Duration of one claim transaction of the worker's loop.",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(self, refresh, clock))
        self._ended: dict[str, Counter] = {
            "completed": self.completed_total,
            "failed": self.failed_total,
            "timed_out": self.timed_out_total,
        }

    # -- Observer: called on the worker's loop thread ----------------------------------
    def claimed(self, name: str) -> None:
        self.claimed_total.labels(name).inc()

    def claim_latency(self, seconds: float) -> None:
        self.claim_seconds.observe(seconds)

    def ended(self, name: str, outcome: str, seconds: float, *, retried: bool) -> None:
        counter = self._ended.get(outcome)
        if counter is not None:
            counter.labels(name).inc()
        if retried:
            self.retried_total.labels(name).inc()
        self.attempt_seconds.labels(name, outcome).observe(max(0.0, seconds))

    def recovered(self, names: list[str]) -> None:
        for name in names:
            self.recovered_total.labels(name).inc()

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges computed when scraped: running attempts, lease, and the cached queue depth."""

    def __init__(self, m: WorkerMetrics, refresh: float, clock: Callable[[], datetime]) -> None:
        self.m = m
        self.refresh = refresh
        self.clock = clock
        self._lock = threading.Lock()
        self._depth: list[tuple[str, str, int]] = []
        self._depth_at: float | None = None  # time.monotonic() of the last successful query
        self._depth_ok = False

    def _queue_depth(self) -> tuple[list[tuple[str, str, int]], bool]:
        # one query per `refresh` seconds however many scrapes arrive; scrapes wait for it
        with self._lock:
            mono = time.monotonic()
            if self._depth_at is None or mono - self._depth_at >= self.refresh:
                try:
                    self._depth = ops.queue_depth(self.m.worker.db, QUEUE_STATUSES)
                    self._depth_ok = True
                except DatabaseUnavailable as e:
                    self._depth_ok = False
                    log.warning("metrics_queue_depth_failed", error=str(e))
                self._depth_at = mono
            return self._depth, self._depth_ok

    def describe(self) -> list[Metric]:
        # without it the registry would call collect() at registration: a database query
        return []

    def collect(self) -> Iterator[Metric]:
        w = self.m.worker
        now = self.clock()
        running = GaugeMetricFamily("flowd_running_attempts", "Attempts this worker is running now.")
        running.add_metric([], sum(1 for a in list(w.running.values()) if not a.over))
        yield running

        renewed = w.lease_renewed_at
        age = GaugeMetricFamily(
            "flowd_worker_lease_age_seconds",
            "Seconds since the worker last registered or renewed its lease (absent without a lease).",
        )
        if renewed is not None:
            age.add_metric([], max(0.0, (now - renewed).total_seconds()))
        yield age
        healthy = GaugeMetricFamily("flowd_worker_healthy", "1 while /healthz answers 200.")
        healthy.add_metric([], 1.0 if w.healthy(now) else 0.0)
        yield healthy
        info = GaugeMetricFamily("flowd_worker_info", "The worker's identity.", labels=["worker_id", "pod_id"])
        info.add_metric([w.worker_id, w.pod_id or ""], 1.0)
        yield info

        rows, ok = self._queue_depth()
        depth = GaugeMetricFamily(
            "flowd_queue_depth",
            "Unfinished tasks in the database by name and status (not completed or permanently_failed). "
            "Fleet-wide: every worker reports the same figure, aggregate with max, never sum.",
            labels=["name", "status"],
        )
        # the handlers this worker serves get a 0 for every queue status they have no task in:
        # an emptied queue reads 0 rather than vanishing
        counts = {(name, str(s)): 0 for name in w.registry.names() for s in QUEUE_STATUSES} if ok else {}
        counts.update({(name, status): count for name, status, count in rows})
        for (name, status), count in sorted(counts.items()):
            depth.add_metric([name, status], float(count))
        yield depth
        up = GaugeMetricFamily("flowd_database_up", "1 if the last queue-depth query succeeded.")
        up.add_metric([], 1.0 if ok else 0.0)
        yield up


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` on a background thread."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        handler = _handler_for(metrics)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise FlowdError(
                f"cannot serve metrics on {host}:{port}: {e.strerror or e}: choose another --metrics-port"
            ) from e
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="flowd-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics_listening", host=self.host, port=self.port, url=f"http://{self.host}:{self.port}/metrics")
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(metrics: WorkerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                w = metrics.worker
                ok = w.healthy(utcnow())
                text = f"{'ok' if ok else 'unhealthy'} {w.worker_id}\n".encode()
                self._send(200 if ok else 503, text, "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # scrapes every few seconds would flood the journal; errors still reach stderr
            return

    return Handler


def serve(worker: Worker, host: str, port: int) -> MetricsServer:
    """Attach metrics to `worker` and serve them; close() the server when the worker stops."""
    m = WorkerMetrics(worker)
    server = MetricsServer(m, host, port)
    worker.observer = m
    return server.start()
