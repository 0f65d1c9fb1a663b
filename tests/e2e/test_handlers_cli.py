"""`flowd handlers` and `flowd submit` against the fleet-wide handler registry, with a real
worker process and a CLI whose own plugin directory is empty (another machine, say)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cli

RESIZE = """
from flowd import handler

@handler("resize", timeout=7, max_retries=5, priority=3)
def resize(task):
    return {"resized": task.payload["w"]}
"""


def test_handlers_and_submit__resolve_through_the_live_fleet(cli: Cli, tmp_path: Path) -> None:
    # SQLite only: tests/engine/test_handler_registry.py covers every backend
    cli.handler_file("resize", RESIZE)
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    away = {"FLOWD_HANDLERS_DIR": str(elsewhere)}
    cli.worker()
    doc = cli.wait_until(lambda: cli.json("handlers")["items"], what="handlers published")
    (h,) = doc
    assert (h["name"], h["source"], h["options"]["timeout"]) == ("resize", "resize.py", 7.0)
    assert len(h["version"]) == 12 and h["worker_id"]

    table = cli.run("handlers").stdout
    assert "resize" in table and h["version"] in table

    p = cli.run("submit", "resize", '{"w": 3}', env=away)
    tid = int(p.stdout.strip())
    done = cli.wait_status(tid, "completed")
    assert (done["timeout"], done["max_retries"], done["priority"]) == (7.0, 5, 3)
    assert done["result"] == {"resized": 3}
    attempts = cli.json("audit", "task", str(tid))["attempts"]["items"]
    assert [a["handler_version"] for a in attempts] == [h["version"]]

    refused = cli.run("submit", "nope", "{}", env=away, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "no live worker serves it" in refused.stderr and "--allow-unknown" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert cli.json("list")["total"] == 1, "nothing written"

    queued = int(cli.run("submit", "nope", "{}", "--allow-unknown", env=away).stdout.strip())
    assert cli.task(queued)["status"] == "pending"
