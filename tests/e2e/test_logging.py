"""Every log line of an attempt carries the task's context, also lines a handler logs itself."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cli

CHATTY = """
import logging
from flowd import handler, get_logger

@handler("chatty")
def chatty(task):
    get_logger("mine").info("structlog_line", step=1)
    logging.getLogger("plain").warning("stdlib line")
    return "ok"
"""


def test_handler_log_lines__carry_task_id_name_attempt_worker(cli: Cli) -> None:
    cli.handler_file("chatty", CHATTY)
    cli.worker()
    tid = cli.submit("chatty", {})
    cli.wait_status(tid, "completed")
    lines = [json.loads(x) for x in cli.logs[0].read_text().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("event") in ("structlog_line", "stdlib line")]
    assert len(mine) == 2, lines
    for x in mine:
        assert x["task_id"] == tid and x["task_name"] == "chatty" and x["attempt"] == 1
        assert x["worker_id"]
