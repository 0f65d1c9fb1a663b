"""Example plugin: `echo` returns its payload; `sleep` waits, reporting progress."""

import time

from flowd import handler


@handler("echo")
def echo(task):
    """Return the payload as the result."""
    return {"echo": task.payload, "attempt": task.attempt}


@handler("sleep", timeout=300, max_retries=1)
def sleep(task):
    """Sleep `seconds` (default 1), reporting progress; honours its timeout."""
    seconds = float(task.payload.get("seconds", 1))
    steps = max(1, int(seconds * 4))
    for i in range(steps):
        task.check_timeout()
        time.sleep(seconds / steps)
        task.progress(f"slept {(i + 1) * seconds / steps:.2f}s", stage_name="sleeping", percent=100 * (i + 1) / steps)
    return {"slept": seconds}


@handler("deploy", steps={"build": 30, "test": 20, "ship": 50})
def deploy(task):
    """Declared steps: `task.step()` sets the stage name and the weighted percentage."""
    for step in ("build", "test", "ship"):
        task.step(step)
        time.sleep(float(task.payload.get("seconds_per_step", 0)))
    return {"deployed": task.payload.get("version", "dev")}
