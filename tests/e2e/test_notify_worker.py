"""The sd_notify protocol spoken by a real `flowd worker` process to a socket the test owns.

The test plays systemd: it binds an AF_UNIX datagram socket, starts the worker with
$NOTIFY_SOCKET pointing at it and a small $WATCHDOG_USEC, and reads what arrives.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

HOLD = """
import time
from pathlib import Path
from flowd import handler

@handler("hold", timeout=60)
def hold(task):
    # runs until the test creates the release file (in the worker's working directory)
    deadline = time.monotonic() + 50
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"released": Path("release").exists()}
"""

WATCHDOG_USEC = 400_000  # the worker pings every 0.2 s


class Systemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram, parsed into KEY=VALUE pairs."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.messages.append(msg)
        return msg

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20) -> dict[str, str]:
        """The first datagram (from now on) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is not None and predicate(msg):
                return msg
        raise AssertionError(f"no matching notification in {timeout}s; got {self.messages[-10:]}")


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    # a short directory: sockaddr_un paths hold about 100 bytes, pytest's tmp_path may not fit
    with tempfile.TemporaryDirectory(prefix="flowd-") as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        path = str(Path(d) / "notify.sock")
        s.bind(path)
        yield Systemd(s, path)


def active_workers(cli: Cli) -> list[dict[str, object]]:
    return [w for w in cli.json("workers")["items"] if w["status"] == "active"]


def test_worker__speaks_sd_notify_from_ready_to_stopping(cli: Cli, systemd: Systemd) -> None:
    cli.handler_file("hold", HOLD)
    worker = cli.worker(env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})

    # READY=1 comes first, and only once the worker is in the registry
    ready = systemd.wait_for(lambda m: True)
    assert ready.get("READY") == "1", ready
    assert "claiming" in ready["STATUS"]
    [registered] = active_workers(cli)
    assert registered["pod_id"] == "a"
    assert ready["STATUS"].startswith(f"worker {registered['worker_id']} ")

    # keep-alive pings at about half of WATCHDOG_USEC, each with a STATUS line
    pings = [systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5) for _ in range(3)]
    assert all("STATUS" in p for p in pings)
    assert pings[-1]["STATUS"].startswith("running 0/"), pings[-1]

    # the STATUS line carries the running and queued counts
    tid = cli.submit("hold")
    busy = systemd.wait_for(lambda m: m.get("STATUS", "").startswith("running 1/"))
    assert "queued 0" in busy["STATUS"], busy
    assert cli.task(tid)["status"] == "running"

    # SIGTERM: STOPPING=1 at once, while the running attempt drains
    worker.send_signal(signal.SIGTERM)
    systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10)
    assert worker.poll() is None, "the worker must drain, not exit, while an attempt runs"
    assert cli.task(tid)["status"] == "running"
    # pings go on during the drain: systemd's watchdog still applies
    systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5)

    (cli.tmp / "release").touch()
    assert worker.wait(20) == 0
    done = cli.task(tid)
    assert done["status"] == "completed" and done["result"] == {"released": True}
    assert active_workers(cli) == []


def test_worker__without_notify_socket_sends_nothing(cli: Cli, systemd: Systemd) -> None:
    """Outside systemd the worker works as usual and never touches a socket."""
    cli.handler_file("hold", HOLD)
    (cli.tmp / "release").touch()
    cli.worker(env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    tid = cli.submit("hold")
    cli.wait_status(tid, "completed")
    assert systemd.next(0.3) is None
