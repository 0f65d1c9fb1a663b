"""A plugin that blocks at import: every command that imports plugins gives up on it at the
worker's import timeout (`plugin_import_timeout`) and names the file; none hangs."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import Cli

BLOCKS = "import time\ntime.sleep(3600)\n"
ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    return task.payload
"""
# far below the 10 s default: a command that ignored the setting would overrun its deadline
QUICK = {"FLOWD_PLUGIN_IMPORT_TIMEOUT": "0.5"}
DEADLINE = 8.0


def _blocked(cli: Cli) -> str:
    cli.env.update(QUICK)
    cli.handler_file("echo", ECHO)
    return str(cli.handler_file("stuck", BLOCKS))


def test_doctor__a_plugin_blocking_at_import_is_a_fail_line_not_a_hang(cli: Cli) -> None:
    stuck = _blocked(cli)
    cli.run("db", "upgrade")
    t0 = time.monotonic()
    p = cli.run("doctor", check=False, timeout=DEADLINE)
    assert time.monotonic() - t0 < DEADLINE
    assert p.returncode == 1
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("FAIL handlers")]
    assert "1 file(s)" in line
    assert f"{stuck}: import did not finish within 0.5s" in p.stdout
    doc = json.loads(cli.run("doctor", "--json", check=False, timeout=DEADLINE).stdout)
    (handlers,) = [c for c in doc["checks"] if c["name"] == "handlers"]
    assert handlers["status"] == "fail" and stuck in handlers["errors"][0]


def test_submit__gives_up_on_a_blocking_plugin_at_the_timeout_and_says_which_file(cli: Cli) -> None:
    stuck = _blocked(cli)
    t0 = time.monotonic()
    p = cli.run("submit", "echo", '{"a": 1}', timeout=DEADLINE)
    assert time.monotonic() - t0 < DEADLINE
    assert p.stdout.strip().isdigit(), "the other plugins still load: echo is known"
    (line,) = [json.loads(x) for x in p.stderr.splitlines() if x.strip()]
    assert line["event"] == "plugin_load_failed" and line["file"] == stuck
    assert "import did not finish within 0.5s" in line["error"]


def test_worker__gives_up_on_a_blocking_plugin_once_and_serves_the_others(cli: Cli) -> None:
    stuck = _blocked(cli)
    tid = cli.submit("echo", {"a": 2})
    cli.worker()
    # started at the setting's timeout, not the 10 s default
    assert cli.wait_status(tid, "completed", timeout=DEADLINE)["result"] == {"a": 2}
    records = [json.loads(x) for x in cli.logs[0].read_text().splitlines() if x.startswith("{")]
    failed = [r for r in records if r["event"] == "plugin_load_failed"]
    assert [r["file"] for r in failed] == [stuck]
