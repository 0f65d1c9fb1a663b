"""A PgBouncer of the test session's own, in transaction mode, in front of the PostgreSQL server.

Started on first use (one process for the session, stopped at its end) from a temporary
configuration: `pool_mode = transaction`, a free port on 127.0.0.1, `auth_type = trust`
with the test user in its auth file, every database forwarded (`* = host=… port=…`, so the
per-test databases need no entry), and no `ignore_startup_parameters`: a client that sends a
startup parameter PgBouncer does not know is refused, as a strictly configured production
pooler refuses it. PgBouncer refuses to run as root; as root it is started with `-u` (the
`postgres` user, else `nobody`), which is how CI (root) runs it.

Skipped with one line saying why when the `pgbouncer` binary or the PostgreSQL URL is missing;
FLOWD_TEST_PGBOUNCER=0 turns the pooled cases off.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

# server connections PgBouncer opens per database: small, like a production pooler in front
# of many clients (the pooled cases prove a handful of server connections serve every worker)
POOL_SIZE = 8

_state: dict[str, str] = {}
_proc: list[subprocess.Popen[bytes]] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str | None:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return ["-u", user]
        except KeyError:
            continue
    pytest.skip("pgbouncer: refuses to run as root and no postgres or nobody user exists")


def _wait_ready(port: int, log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer not listening on {port} after 15 s:\n{log.read_text(errors='replace')[-2000:]}")


def start(direct_url: str) -> tuple[str, str]:
    """(host, port) of the session's PgBouncer in front of `direct_url`'s server; started once."""
    if "port" in _state:
        return _state["host"], _state["port"]
    if os.environ.get("FLOWD_TEST_PGBOUNCER", "1") == "0":
        pytest.skip("pgbouncer: pooled cases off (FLOWD_TEST_PGBOUNCER=0)")
    binary = _binary()
    if binary is None:
        pytest.skip("pgbouncer: binary not found (apt-get install -y pgbouncer) — pooled cases not run")
    url = sa.make_url(direct_url)
    tmp = Path(tempfile.mkdtemp(prefix="flowd-pgbouncer-"))
    tmp.chmod(0o755)  # readable by the user PgBouncer drops to
    port = _free_port()
    users = tmp / "users.txt"
    users.write_text(f'"{url.username or "postgres"}" "{url.password or ""}"\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={url.host or '127.0.0.1'} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {POOL_SIZE}\nmax_client_conn = 2000\n"
        # per-test databases are dropped WITH (FORCE) while PgBouncer may hold a server
        # connection to them: forget idle pools quickly
        "autodb_idle_timeout = 30\nserver_idle_timeout = 30\n"
    )
    for f in (users, ini):
        f.chmod(0o644)
    log = tmp / "pgbouncer.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([binary, *_run_as(), str(ini)], stdout=fh, stderr=subprocess.STDOUT)
    _proc.append(proc)
    atexit.register(stop)
    _wait_ready(port, log, proc)
    _state.update(host="127.0.0.1", port=str(port), dir=str(tmp))
    return _state["host"], _state["port"]


def pooled_url(direct_url: str) -> str:
    """`direct_url` with its host and port replaced by the session's PgBouncer."""
    host, port = start(direct_url)
    return sa.make_url(direct_url).set(host=host, port=int(port)).render_as_string(hide_password=False)


def stop() -> None:
    """Stop the session's PgBouncer (if one was started) and remove its files."""
    while _proc:
        p = _proc.pop()
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    if "dir" in _state:
        shutil.rmtree(_state["dir"], ignore_errors=True)
    _state.clear()
