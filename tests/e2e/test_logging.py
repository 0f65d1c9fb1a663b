"""Every log line of an attempt carries the task's context, also lines a handler logs itself."""

from __future__ import annotations

import json
import signal

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


PRINTS = """
import sys
import threading
import warnings
from flowd import handler

print("hello from import")
print("import warning", file=sys.stderr)

def crash():
    raise RuntimeError("thread died")

@handler("printer")
def printer(task):
    print("handler says", task.payload["n"])
    sys.stderr.write("partial ")
    sys.stderr.write("line\\n")
    print("flushed, no newline", end="", flush=True)
    warnings.warn("careful")
    t = threading.Thread(target=crash, name="helper")
    t.start()
    t.join()
    print("left unfinished", end="")
    return "ok"
"""


def test_json_logs__what_plugins_and_handlers_print_is_one_json_record_a_line(cli: Cli) -> None:
    plugin = cli.handler_file("printer", PRINTS)
    worker = cli.worker()  # FLOWD_LOG_FORMAT=json; stdout and stderr both go to the log file
    tid = cli.submit("printer", {"n": 7})
    cli.wait_status(tid, "completed")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    raw = cli.logs[0].read_text().splitlines()
    records = [json.loads(line) for line in raw]  # every line parses: no raw print output
    assert all(isinstance(r, dict) and "event" in r for r in records)
    plugin_out = [(r["stream"], r["text"], r["file"]) for r in records if r["event"] == "plugin_output"]
    assert plugin_out == [("stdout", "hello from import", str(plugin)), ("stderr", "import warning", str(plugin))]
    handler_out = [r for r in records if r["event"] == "handler_output"]
    assert [(r["stream"], r["text"]) for r in handler_out] == [
        ("stdout", "handler says 7"),
        ("stderr", "partial line"),
        ("stdout", "flushed, no newline"),
        ("stdout", "left unfinished"),  # logged when the attempt ends, with its task
    ]
    for r in handler_out:
        assert (r["task_id"], r["task_name"], r["attempt"]) == (tid, "printer", 1)
    # multi-line reports are one record each
    (warned,) = [r for r in records if "careful" in r["event"]]
    assert warned["logger"] == "py.warnings"
    (crashed,) = [r for r in records if r["event"] == "thread_crashed"]
    assert crashed["thread"] == "helper" and "RuntimeError: thread died" in crashed["exception"]
