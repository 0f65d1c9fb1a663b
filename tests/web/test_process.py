"""`flowd web` as a process: it refuses an unsafe address, and stops at once with streams open."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.web.processes import free_port, start_web


def test_web__refuses_a_public_address_without_a_token(cli: Cli) -> None:
    p = cli.run("web", "--host", "0.0.0.0", "--port", str(free_port()), check=False, timeout=30)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "refusing to listen on 0.0.0.0 without a token" in p.stderr and "--token" in p.stderr
    short = cli.run("web", "--token", "short", check=False, timeout=30)
    assert short.returncode == 2 and "web_token" in short.stderr


def test_web__a_busy_port_is_one_line_and_exit_1(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = cli.run("web", "--port", str(port), check=False, timeout=30)
    assert p.returncode == 1
    assert p.stderr.startswith(f"flowd: error: cannot listen on 127.0.0.1:{port}: ") and p.stderr.count("\n") == 1


def test_web__on_a_public_address_every_read_needs_the_token(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    token = "env-token-123"
    web = start_web(cli, "--host", "0.0.0.0", port=port, log=tmp_path / "web.log", env={"FLOWD_WEB_TOKEN": token})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/tasks")
        r = conn.getresponse()
        assert r.status == 401 and b"Bearer" in r.read()
        conn.request("GET", "/api/tasks", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["total"] == 0
        conn.request("GET", "/tasks")
        r = conn.getresponse()
        r.read()
        assert r.status == 303 and r.getheader("location") == "/login?next=/tasks"
        conn.close()
    finally:
        web.terminate()
        assert web.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_web__a_signal_stops_it_at_once_with_event_streams_open(cli: Cli, tmp_path: Path, sig: int) -> None:
    port = free_port()
    web = start_web(cli, "--token", "process-token-1", port=port, log=tmp_path / "web.log")
    streams = []
    try:
        for query in ("", "?task=1"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/api/events/stream{query}")
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
            assert r.readline().startswith(b"retry:")  # the stream is open
            streams.append((conn, r))
        started = time.monotonic()
        os.kill(web.pid, sig)
        code = web.wait(10)
        took = time.monotonic() - started
    finally:
        if web.poll() is None:
            web.kill()
            web.wait(5)
        for conn, _r in streams:
            conn.close()
    assert code == 0, (tmp_path / "web.log").read_text(errors="replace")
    # the streams end themselves: no waiting for uvicorn's graceful-shutdown timeout (5 s)
    assert took < 3.0, took
