"""`flowd top --once` (and off a terminal): one plain frame of a real worker's state."""

from __future__ import annotations

import re

from tests.e2e.conftest import Cli

HANDLERS = """
import time
from pathlib import Path
from flowd import handler

@handler("ok")
def ok(task):
    return 1

@handler("boom", max_retries=1)
def boom(task):
    raise ValueError("bad input")

@handler("hold", timeout=60)
def hold(task):
    task.progress("crunching", stage_name="crunch", percent=40)
    deadline = time.monotonic() + 50
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"
"""

SECTIONS = [
    r"^flowd top  sqlite:///\S+  \d{4}-\d\d-\d\dT",
    r"^workers \(1 active\)$",
    r"^queue by name and status$",
    r"^throughput \(last 60s, 5s buckets\)  [▁-█]{12}  3 attempts ended, [\d.]+/s, 1 failed$",
    r"^running \(1\)$",
    r"^recent failures$",
]


def cells(line: str) -> list[str]:
    """The cells of a plain table row (columns are separated by two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


def test_top_once__plain_frame_with_every_section(cli: Cli) -> None:
    cli.handler_file("handlers", HANDLERS)
    cli.worker(pod="a")
    for tid in (cli.submit("ok"), cli.submit("ok")):
        cli.wait_status(tid, "completed")
    bad = cli.submit("boom")
    cli.wait_status(bad, "permanently_failed")
    held = cli.submit("hold")
    cli.wait_until(lambda: cli.task(held)["progress_percent"] == 40, what="progress 40%")

    out = cli.run("top", "--once").stdout
    lines = [x.rstrip() for x in out.splitlines()]
    assert "\x1b[" not in out  # no colours or cursor moves off a terminal
    found = []
    for pattern in SECTIONS:
        at = next((i for i, x in enumerate(lines) if re.search(pattern, x.strip())), None)
        assert at is not None, f"{pattern!r} not in:\n{out}"
        found.append(at)
    assert found == sorted(found), "sections out of order"
    workers, queue, _tp, running, failures = (
        lines[a:b] for a, b in zip(found[1:], [*found[2:], len(lines)], strict=True)
    )

    [worker_row] = [cells(x) for x in workers if re.match(r"\s+\S+-a-\d+-", x)]
    assert worker_row[1:5] == ["a", worker_row[2], worker_row[3], "1"]  # pod a, running 1

    header = next(cells(x) for x in queue if x.strip().startswith("name"))
    assert header == ["name", "running", "completed", "permanently_failed"]
    rows = {c[0]: c[1:] for c in (cells(x) for x in queue) if c[0] in ("ok", "boom", "hold")}
    assert rows == {"boom": ["1"], "hold": ["1"], "ok": ["2"]}

    [run_row] = [cells(x) for x in running if re.match(rf"\s+{held}\s", x)]
    assert run_row[1] == "hold" and run_row[4] == "0 crunch: crunching"
    assert run_row[5] == "[####......] 40%"

    [fail_row] = [cells(x) for x in failures if "ValueError" in x]
    assert fail_row[1:] == [str(bad), "boom", "1", "failed", "ValueError: bad input"]

    (cli.tmp / "release").touch()
    cli.wait_status(held, "completed")


def test_top__off_a_terminal_draws_one_frame_and_json_is_the_dashboard(cli: Cli) -> None:
    cli.handler_file("handlers", HANDLERS)
    p = cli.run("top", timeout=20)  # stdout is a pipe: no redraw loop, exit at once
    assert p.stdout.lstrip().startswith("flowd top") and p.stdout.count("flowd top") == 1
    doc = cli.json("top")
    assert set(doc) == {"generated_at", "workers", "queue", "throughput", "running", "failures"}
    assert doc["workers"] == [] and doc["throughput"]["ended"] == [0] * 12
