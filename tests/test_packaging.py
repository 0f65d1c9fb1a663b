"""`python -m build` makes a wheel and an sdist that install and run without the checkout.

The wheel is built from the sdist (what `python -m build` does), so a file missing from the
sdist fails here too. The installed `flowd` then runs in an empty directory, away from the
checkout: the migrations create the schema, the worker makes its handlers directory and
serves a handler dropped into it, and `flowd --version` is the package metadata's version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    return {"echo": task.payload}
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_and_sdist__install_and_run_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", "PYTHON"))}
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], tmp_path, env)
    (sdist,) = dist.glob("flowd-*.tar.gz")
    (wheel,) = dist.glob("flowd-*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("flowd/store/migrations/versions/0001_initial_schema.py") for n in names)
    assert any(n.endswith("flowd/store/migrations/script.py.mako") for n in names)
    assert any(n.endswith("flowd/web/templates/overview.html") for n in names)  # the dashboard's files

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env)
    flowd = str(venv / "bin" / "flowd")
    app = tmp_path / "app"  # an empty directory, nowhere near the checkout
    app.mkdir()
    meta = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, flowd; print(m.version('flowd'), flowd.__file__)",
        ],
        app,
        env,
    ).stdout.split()
    assert not meta[1].startswith(str(ROOT)), "flowd imported from the checkout, not the installed wheel"
    assert _run([flowd, "--version"], app, env).stdout.strip() == f"flowd {meta[0]}"
    assert "up to date" in _run([flowd, "db", "upgrade"], app, env).stdout

    run_env = {**env, "FLOWD_POLL_INTERVAL": "0.1", "FLOWD_LOG_FORMAT": "json"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [flowd, "worker"], cwd=app, env=run_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while "worker_started" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (app / "handlers").is_dir() and "handlers_dir_created" in log.read_text()
        (app / "handlers" / "echo.py").write_text(textwrap.dedent(ECHO))
        r = _run([flowd, "submit", "echo", '{"n": 1}', "--wait", "--wait-timeout", "60"], app, run_env)
        assert json.loads(r.stdout) == {"echo": {"n": 1}}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0, log.read_text()
