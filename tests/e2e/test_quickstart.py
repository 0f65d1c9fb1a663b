"""The README quick start, as a user types it."""

from __future__ import annotations

from tests.e2e.conftest import Cli

ECHO = """
from flowd import handler

@handler("echo")
def echo(task):
    return {"echo": task.payload, "attempt": task.attempt}
"""


def test_quickstart__submit_show_list(any_cli: Cli) -> None:
    any_cli.handler_file("echo", ECHO)
    any_cli.worker()
    tid = any_cli.submit("echo", {"x": 1})
    done = any_cli.wait_status(tid, "completed")
    assert done["result"] == {"echo": {"x": 1}, "attempt": 1}
    human = any_cli.run("show", str(tid)).stdout
    assert "completed" in human and "echo" in human
    page = any_cli.json("list", "--status", "completed")
    assert [t["id"] for t in page["items"]] == [tid]
    assert page["has_more"] is False
