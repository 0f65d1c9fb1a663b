"""The systemd notify protocol against a real AF_UNIX datagram socket standing in for PID 1."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowd.engine.notify import Notifier, sd_notify, watchdog_interval

# sockaddr_un.sun_path holds 108 bytes on Linux (104 on BSD/macOS).
_MAX_SOCKET_PATH = 100


class Receiver:
    """A bound datagram socket playing systemd's side of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the $NOTIFY_SOCKET value

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def assert_nothing_received(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    short_dir = None
    if len(str(path)) > _MAX_SOCKET_PATH:
        short_dir = tempfile.TemporaryDirectory(prefix="flowd-")
        path = Path(short_dir.name) / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield Receiver(sock, str(path))
    if short_dir is not None:
        short_dir.cleanup()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract-namespace sockets exist on Linux only")
    name = f"flowd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield Receiver(sock, "@" + name)


def test_sd_notify__sends_ready_and_status(receiver: Receiver) -> None:
    assert sd_notify("READY=1", "STATUS=serving", env=receiver.env) is True
    assert receiver.receive() == "READY=1\nSTATUS=serving"


def test_sd_notify__sends_each_call_as_one_datagram(receiver: Receiver) -> None:
    assert sd_notify("STATUS=one", env=receiver.env)
    assert sd_notify("STATUS=two", env=receiver.env)
    assert receiver.receive() == "STATUS=one"
    assert receiver.receive() == "STATUS=two"


def test_sd_notify__reaches_abstract_namespace_socket(abstract_receiver: Receiver) -> None:
    assert sd_notify("WATCHDOG=1", env=abstract_receiver.env) is True
    assert abstract_receiver.receive() == "WATCHDOG=1"


def test_sd_notify__reads_os_environ_by_default(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    assert sd_notify("STATUS=from environ") is True
    assert receiver.receive() == "STATUS=from environ"


def test_sd_notify__returns_false_when_notify_socket_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    assert sd_notify("READY=1", env={}) is False
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_sd_notify__explicit_env_overrides_os_environ(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    assert sd_notify("READY=1", env={}) is False
    receiver.assert_nothing_received()


def test_sd_notify__returns_false_when_socket_path_missing(tmp_path: Path) -> None:
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False


def test_sd_notify__returns_false_when_path_is_not_a_socket(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "plain-file"
    not_a_socket.write_text("")
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": str(not_a_socket)}) is False


def test_sd_notify__returns_false_when_path_too_long() -> None:
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "/" + "x" * 200}) is False


def test_sd_notify__returns_false_for_unsupported_address() -> None:
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_sd_notify__returns_false_without_lines(receiver: Receiver) -> None:
    assert sd_notify(env=receiver.env) is False
    receiver.assert_nothing_received()


def test_notifier__ready_sends_ready_and_status(receiver: Receiver) -> None:
    assert Notifier(receiver.env).ready("worker a: 10 slots") is True
    assert receiver.receive() == "READY=1\nSTATUS=worker a: 10 slots"


def test_notifier__ready_without_status_sends_ready_only(receiver: Receiver) -> None:
    assert Notifier(receiver.env).ready() is True
    assert receiver.receive() == "READY=1"


def test_notifier__sends_status_watchdog_and_stopping(receiver: Receiver) -> None:
    notifier = Notifier(receiver.env)
    assert notifier.status("draining 3 tasks")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert receiver.receive() == "STATUS=draining 3 tasks"
    assert receiver.receive() == "WATCHDOG=1"
    assert receiver.receive() == "STOPPING=1"


def test_notifier__status_keeps_multiline_text_on_one_line(receiver: Receiver) -> None:
    assert Notifier(receiver.env).status("line one\nREADY=1")
    assert receiver.receive() == "STATUS=line one READY=1"


def test_notifier__is_disabled_and_silent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (Notifier(), Notifier({})):
        assert notifier.enabled is False
        assert notifier.ready("up") is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False


def test_notifier__is_enabled_with_notify_socket(receiver: Receiver) -> None:
    assert Notifier(receiver.env).enabled is True


def test_notifier__reads_environment_once_at_construction(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.watchdog() is True
    assert receiver.receive() == "WATCHDOG=1"


def test_notifier__returns_false_when_socket_vanished(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled is True
    assert notifier.ready("up") is False


def test_notifier__exposes_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval == 30.0
    assert Notifier({}).watchdog_interval is None


def test_watchdog_interval__is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5


def test_watchdog_interval__applies_when_watchdog_pid_is_this_process() -> None:
    env = {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 30.0


def test_watchdog_interval__is_none_when_watchdog_pid_is_another_process() -> None:
    env = {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(env) is None


def test_watchdog_interval__is_none_without_watchdog_usec() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_PID": str(os.getpid())}) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "sixty", "1.5"])
def test_watchdog_interval__is_none_for_unusable_watchdog_usec(usec: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


def test_watchdog_interval__is_none_for_garbage_watchdog_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "self"}) is None


def test_watchdog_interval__reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 5.0


def test_worker__keeps_pinging_the_watchdog_while_the_database_is_down(
    receiver: Receiver, sqlite_url: str, make_manager: Any
) -> None:
    """A database outage must not get the worker killed by systemd: pings go on, STATUS says why."""
    from datetime import timedelta

    from flowd.store.db import Database

    mgr = make_manager(sqlite_url)
    mgr.use("ok", lambda t: 1)
    worker = mgr.make_worker()
    worker.notifier = Notifier({**receiver.env, "WATCHDOG_USEC": "2000000"})  # a ping every second
    worker.start()
    assert receiver.receive().startswith("READY=1")
    now = worker.clock()
    worker.run_once(now)
    assert receiver.receive().startswith("WATCHDOG=1\nSTATUS=running 0/10; queued 0;")

    # the database goes away (a real refused connection), the loop keeps turning
    up = worker.db
    worker.db = Database("postgresql+psycopg://flowd@127.0.0.1:1/flowd")
    try:
        for step in (1, 2, 3):
            worker.run_once(now + timedelta(seconds=1.1 * step))
            ping = receiver.receive()
            assert ping.startswith("WATCHDOG=1\nSTATUS=running 0/10; database unreachable;"), ping
    finally:
        worker.db.dispose()
        worker.db = up
    worker.close()
