"""flowd from application code, end to end: `submit --wait`, handlers from an importable
package (`worker --module`, FLOWD_HANDLER_MODULES), `flowd worker` in an empty directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.e2e.conftest import FAST_ENV, Cli

ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    if task.payload.get("fail"):
        raise RuntimeError("asked to fail")
    if task.payload.get("sleep"):
        import time
        time.sleep(task.payload["sleep"])
    return {"echo": task.payload}
"""

TASKS = """
from flowd import handler

@handler("app.add", max_retries=4, priority=3)
def add(task):
    return task.payload["a"] + task.payload["b"]
"""

# the console script of this venv: its sys.path starts with the venv's bin, not the working directory
FLOWD = str(Path(sys.executable).parent / "flowd")


def test_submit_wait__prints_the_result_or_fails_with_exit_1(any_cli: Cli) -> None:
    cli = any_cli
    cli.handler_file("echo", ECHO)
    cli.worker()
    r = cli.run("submit", "echo", '{"x": 1}', "--wait", "--wait-timeout", "30")
    assert json.loads(r.stdout) == {"echo": {"x": 1}}
    r = cli.run("submit", "echo", '{"x": 2}', "--wait", "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "completed" and doc["result"] == {"echo": {"x": 2}}
    r = cli.run("submit", "echo", '{"fail": true}', "--max-retries", "1", "--wait", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert "failed: RuntimeError: asked to fail" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli.run("submit", "echo", '{"sleep": 5}', "--wait", "--wait-timeout", "0.5", check=False)
    assert r.returncode == 1 and "is still" in r.stderr and "after 0.5s" in r.stderr
    r = cli.run("submit", "echo", "{}", "--wait-timeout", "3", check=False)
    assert r.returncode == 2 and "--wait-timeout needs --wait" in r.stderr


def _package(root: Path) -> None:
    pkg = root / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(textwrap.dedent(TASKS))


def test_worker_module__serves_handlers_from_a_package_in_the_working_directory(cli: Cli) -> None:
    _package(cli.tmp)
    # modules instead of a plugin directory (./handlers does not exist, and is not created)
    env = {k: v for k, v in cli.env.items() if k != "FLOWD_HANDLERS_DIR"}
    (cli.tmp / "handlers").rmdir()
    env.pop("PYTHONPATH")
    env["FLOWD_HANDLER_MODULES"] = "myapp.tasks"
    log = cli.tmp / "worker.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            [FLOWD, "worker", "--module", "myapp.tasks", "--pod-id", "m"],
            cwd=cli.tmp,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # `flowd submit` knows the module's declarations (options) as it knows the directory's
        out = subprocess.run(
            [FLOWD, "submit", "app.add", '{"a": 2, "b": 3}', "--json"], cwd=cli.tmp, env=env, capture_output=True
        )
        assert out.returncode == 0, out.stderr
        task = json.loads(out.stdout)
        assert (task["max_retries"], task["priority"]) == (4, 3)
        done = cli.wait_status(task["id"], "completed")
        assert done["result"] == 5, log.read_text()
        r = subprocess.run([FLOWD, "handlers", "--json"], cwd=cli.tmp, env=env, capture_output=True, text=True)
        (h,) = json.loads(r.stdout)["items"]
        assert h["name"] == "app.add" and h["source"] == "module:myapp.tasks"
        r = subprocess.run([FLOWD, "handlers"], cwd=cli.tmp, env=env, capture_output=True, text=True)
        assert "restart the workers to deploy" in r.stdout
        # an import error: one line naming the module, exit 2
        bad = {**env, "FLOWD_HANDLER_MODULES": "myapp.nope"}
        r = subprocess.run([FLOWD, "submit", "app.add", "{}"], cwd=cli.tmp, env=bad, capture_output=True, text=True)
        assert r.returncode == 2 and "myapp.nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
    assert p.returncode == 0, log.read_text()
    assert not (cli.tmp / "handlers").exists()


def test_worker_module__an_import_error_is_logged_and_the_worker_runs_on(cli: Cli) -> None:
    cli.handler_file("echo", ECHO)
    p = cli.worker("--module", "nowhere.to.be.found")
    try:
        tid = cli.submit("echo", {"y": 1})
        assert cli.wait_status(tid, "completed")["result"] == {"echo": {"y": 1}}
        text = cli.log_tail(100_000)
        assert "plugin_load_failed" in text and "nowhere.to.be.found" in text
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)


def test_worker__in_an_empty_directory_runs_on_the_sqlite_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    env.update(FAST_ENV)
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            [FLOWD, "worker"], cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while "worker_started" not in log.read_text():
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert (tmp_path / "handlers").is_dir() and (tmp_path / "flowd.db").is_file()
        assert "handlers_dir_created" in log.read_text()
        # a file dropped into the created directory is served (the directory is watched)
        (tmp_path / "handlers" / "echo.py").write_text(textwrap.dedent(ECHO))
        cli = Cli(tmp_path, "sqlite:///flowd.db")
        cli.env.pop("FLOWD_HANDLERS_DIR")
        r = cli.run("submit", "echo", '{"z": 1}', "--wait", "--wait-timeout", "30")
        assert json.loads(r.stdout) == {"echo": {"z": 1}}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
    assert p.returncode == 0, log.read_text()
