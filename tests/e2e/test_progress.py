"""Long CLI operations draw progress on a terminal (a real pty) and nothing in scripts."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from flowd.clock import utcnow
from flowd.manager import TaskManager
from flowd.store.schema import tasks as T
from tests.e2e.conftest import Cli

N = 1200  # more than two delete chunks of 500


def on_terminal(cli: Cli, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run flowd with stdin, stdout and stderr on a pseudo-terminal; return (exit code, screen bytes)."""
    master, slave = pty.openpty()
    env = {**cli.env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    env.pop("NO_COLOR", None)
    p = subprocess.Popen(
        [sys.executable, "-m", "flowd", *args], cwd=cli.tmp, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    return p.wait(10), out.decode(errors="replace")


@pytest.fixture
def many(cli: Cli) -> Cli:
    """N pending tasks, and N completed ones last touched two days ago."""
    cli.handler_file("x", "from flowd import handler\n\n@handler('x')\ndef x(task):\n    return 1\n")
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers))
    try:
        m.submit_many([("x", {"i": i}) for i in range(N)])
        old = m.submit_many([("x", {"i": i}) for i in range(N)])
    finally:
        m.close()
    # completed two days ago: one UPDATE ages them past retention's one-day default
    engine = sa.create_engine(cli.db_url)
    with engine.begin() as conn:
        two_days_ago = utcnow() - timedelta(days=2)
        conn.execute(sa.update(T).where(T.c.id.in_(old)).values(status="completed", updated_at=two_days_ago))
    engine.dispose()
    return cli


def test_delete__progress_on_a_terminal_quiet_in_a_pipe(many: Cli) -> None:
    code, screen = on_terminal(many, "delete", "--status", "pending", "--yes")
    assert code == 0, screen
    assert "deleting tasks" in screen and f"{N}/{N}" in screen
    # the bar erases itself (cursor up, clear line), then the usual output follows
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.rstrip().splitlines()[-1])
    assert last.strip() == str(N)

    assert many.run("submit", "x").returncode == 0
    piped = many.run("delete", "--status", "pending", "--yes")
    assert (piped.stdout, piped.stderr) == ("1\n", "")


def test_retention__progress_on_a_terminal_json_unchanged(many: Cli) -> None:
    code, screen = on_terminal(many, "retention")
    assert code == 0, screen
    assert "retention: deleting expired tasks" in screen
    assert f"tasks_deleted: {N}" in screen
    again = many.run("retention", "--json")
    assert again.stderr == "" and again.stdout == '{"tasks_deleted": 0, "events_deleted": 0, "attempts_deleted": 0}\n'


def test_json_on_a_terminal__draws_no_progress(many: Cli) -> None:
    code, screen = on_terminal(many, "delete", "--status", "pending", "--yes", "--json")
    assert code == 0
    assert screen.strip() == f'{{"deleted": {N}}}'


def test_db_upgrade__spinner_on_a_terminal_one_line_in_a_pipe(cli: Cli) -> None:
    code, screen = on_terminal(cli, "db", "upgrade")
    assert code == 0 and "migrating the schema of sqlite:///" in screen
    piped = cli.run("db", "upgrade")
    assert piped.stderr == "" and piped.stdout.startswith("schema up to date at sqlite:///")
    assert len(piped.stdout.splitlines()) == 1
