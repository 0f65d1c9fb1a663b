"""Example plugin: a fan-out/fan-in pipeline, a human approval gate, and a cron report."""

import datetime
import time

from flowd import SubTasks, handler


@handler("pipeline", timeout=60)
def pipeline(task):
    """Stage 0 fans out one `square` per number; stage 1 sums the children's results."""
    if task.stage == 0:
        numbers = task.payload.get("numbers", [1, 2, 3])
        task.progress("fanning out", stage_name="fan_out", percent=10)
        seconds = task.payload.get("seconds", 0)  # how long each child takes (to watch it run)
        return SubTasks([{"name": "square", "payload": {"n": n, "seconds": seconds}} for n in numbers], context=b"sum")
    kids = task.children()
    failed = [k["id"] for k in kids if k["status"] != "completed"]
    total = sum(k["result"]["square"] for k in kids if k["status"] == "completed")
    return {"sum": total, "failed_children": failed, "context": task.context.decode()}


@handler("square", max_retries=2)
def square(task):
    """One child of the pipeline."""
    n = task.payload["n"]
    task.audit("square_started", metadata={"n": n})
    # children take different times, so `flowd audit summary` has a critical path to show
    time.sleep(float(task.payload.get("seconds", 0)) * (1 + task.id % 3) / 2)
    return {"square": n * n}


@handler("approval")
def approval(task):
    """Parks itself until `flowd resume ID --reason approved` (or `flowd cancel ID`)."""
    if task.stage == 0:
        return task.suspend("awaiting_approval", context=task.payload.get("document", "").encode())
    return {"approved": True, "document": task.context.decode(), "stage": task.stage}


@handler("report", timeout=120)
def report(task):
    """A recurring job: `flowd cron report "0 2 * * *" '{"kind": "daily"}'`."""
    return {"kind": task.payload.get("kind", "daily"), "ran_at": datetime.datetime.now(datetime.UTC).isoformat()}
