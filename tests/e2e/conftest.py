"""End-to-end helpers: the real `flowd` command in subprocesses, workers as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WITH_POOLER, fresh_database

ROOT = Path(__file__).resolve().parents[2]

FAST_ENV = {
    "FLOWD_POLL_INTERVAL": "0.05",
    "FLOWD_TASK_HEARTBEAT_INTERVAL": "0.3",
    "FLOWD_TASK_HEARTBEAT_TIMEOUT": "5",
    "FLOWD_WORKER_HEARTBEAT_INTERVAL": "0.3",
    "FLOWD_WORKER_HEARTBEAT_TIMEOUT": "2",
    "FLOWD_LOG_FORMAT": "json",
    "FLOWD_SHUTDOWN_GRACE": "10",
}


class Cli:
    """One isolated flowd installation: a database, a plugin directory, worker processes."""

    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp = tmp
        self.handlers = tmp / "handlers"
        self.handlers.mkdir(exist_ok=True)
        self.db_url = db_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
        self.env.update(FAST_ENV)
        self.env["FLOWD_DB_URL"] = db_url
        self.env["FLOWD_HANDLERS_DIR"] = str(self.handlers)
        self.env["PYTHONPATH"] = str(ROOT)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def handler_file(self, name: str, source: str) -> Path:
        path = self.handlers / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def run(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        e = {**self.env, **(env or {})}
        p = subprocess.run(
            [sys.executable, "-m", "flowd", *args],
            cwd=self.tmp,
            env=e,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"flowd {' '.join(args)} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
            )
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def submit(self, name: str, payload: dict[str, Any] | None = None, *opts: str) -> int:
        args = ["submit", name] + ([json.dumps(payload)] if payload is not None else []) + list(opts)
        return int(self.run(*args).stdout.strip().splitlines()[-1])

    def task(self, task_id: int) -> dict[str, Any]:
        return self.json("show", str(task_id))  # type: ignore[no-any-return]

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} not reached after {timeout}s\n{self.log_tail()}")

    def wait_status(self, task_id: int, statuses: str | set[str], timeout: float = 30) -> dict[str, Any]:
        want = {statuses} if isinstance(statuses, str) else statuses
        return self.wait_until(
            lambda: (t := self.task(task_id))["status"] in want and t,
            timeout,  # type: ignore[no-any-return]
            f"task {task_id} in {want}",
        )

    def worker(self, *args: str, pod: str | None = "a", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "flowd", "worker", "--handlers", str(self.handlers)]
        if pod:
            cmd += ["--pod-id", pod]
        cmd += list(args)
        log = self.tmp / f"worker{len(self.workers)}.log"
        fh = open(log, "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            cmd,
            cwd=self.tmp,
            env={**self.env, **(env or {})},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(p)
        self.logs.append(log)
        return p

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in self.logs if p.exists())

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                    p.wait(15)
                except Exception:
                    p.kill()
                    p.wait(5)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """A flowd installation on a fresh SQLite database."""
    c = Cli(tmp_path, f"sqlite:///{tmp_path / 'flowd.db'}")
    yield c
    c.close()


@pytest.fixture(params=WITH_POOLER)
def any_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    """A flowd installation on each available backend."""
    gen = fresh_database(request.param, tmp_path, migrated=True)
    url = next(gen)
    c = Cli(tmp_path, url)
    try:
        yield c
    finally:
        c.close()
        for _ in gen:
            pass
