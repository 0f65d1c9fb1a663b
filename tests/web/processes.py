"""`flowd web` as a real process beside real workers (for the browser and signal tests)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import Cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_web(cli: Cli, *args: str, port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `flowd web` and wait until it answers /healthz."""
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(
        [sys.executable, "-m", "flowd", "web", "--port", str(port), *args],
        cwd=cli.tmp,
        env={**cli.env, **(env or {})},
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"flowd web did not start (exit {p.poll()}):\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
