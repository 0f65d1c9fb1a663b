"""The database going away does not kill a worker: it backs off, reconnects and finishes everything once.

The shared servers are never restarted (other tests run on them): a TCP relay in this test
process stands between a real worker process and the server, and cutting it drops every
connection the worker holds (pool and LISTEN) and refuses new ones until it is restored.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from flowd.manager import TaskManager
from tests.conftest import fresh_database
from tests.e2e.conftest import Cli

WORK = """
import time
from flowd import handler

@handler("work")
def work(task):
    time.sleep(0.5)
    return {"n": task.payload["n"]}
"""


class Relay:
    """A TCP relay on 127.0.0.1 to (host, port); `cut()` drops every connection and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_database_outage__worker_reconnects_and_every_task_completes_once(kind: str, tmp_path: Path) -> None:
    gen = fresh_database(kind, tmp_path, migrated=True)  # skips when the server's URL is unset
    url = next(gen)
    direct = sa.make_url(url)
    relay = Relay(direct.host or "127.0.0.1", direct.port or (5432 if kind == "postgres" else 3306))
    via_relay = direct.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    cli = Cli(tmp_path, url)
    cli.handler_file("work", WORK)
    m = TaskManager(db_url=url, handlers_dir=str(cli.handlers), reload=False)  # the test's own path: direct
    try:
        # PostgreSQL: long poll and heartbeat intervals, so an idle worker only looks again
        # when NOTIFY wakes it; MySQL has no wake-ups and polls
        worker = cli.worker(
            env={
                "FLOWD_DB_URL": via_relay,
                "FLOWD_POLL_INTERVAL": "30" if kind == "postgres" else "0.5",
                "FLOWD_WORKER_HEARTBEAT_INTERVAL": "60",
                "FLOWD_TASK_HEARTBEAT_INTERVAL": "60",
                "FLOWD_WORKER_HEARTBEAT_TIMEOUT": "120",
                "FLOWD_TASK_HEARTBEAT_TIMEOUT": "120",
            }
        )
        cli.wait_until(lambda: m.workers(status="active").total == 1, what="worker registered")
        before = [m.submit("work", {"n": n}) for n in range(4)]
        cli.wait_until(lambda: any(m.get_task(t).status == "running" for t in before), what="a task running")
        relay.cut()  # handlers still run; their outcomes cannot be written
        during = [m.submit("work", {"n": n}) for n in range(4, 8)]
        cli.wait_until(lambda: "database_unavailable" in cli.log_tail(100_000), what="the worker noticed the outage")
        assert worker.poll() is None, "the outage killed the worker\n" + cli.log_tail()
        relay.restore()
        ids = before + during
        cli.wait_until(lambda: all(m.get_task(t).status == "completed" for t in ids), 60, "every task completed")
        for n, tid in enumerate(ids):
            audit = m.task_audit(tid)
            assert m.get_task(tid).result == {"n": n}
            assert [a["outcome"] for a in audit["attempts"]["items"]] == ["completed"]
            assert [e["event_type"] for e in audit["events"]["items"]].count("task_completed") == 1
        if kind == "postgres":
            # the listener LISTENs again after the outage: a submit wakes the idle worker
            # long before its 30 s poll would
            late = m.submit("work", {"n": 8})
            cli.wait_until(lambda: m.get_task(late).status == "completed", 20, "woken by NOTIFY after re-LISTEN")
        assert worker.poll() is None
    finally:
        cli.close()
        m.close()
        relay.close()
        for _ in gen:
            pass
