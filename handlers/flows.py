"""Example plugin: a fan-out/fan-in flow with a join task, and a chain (see README "Flows")."""

from flowd import handler


@handler("resize", max_retries=2)
def resize(task):
    """One step of the media flow: pretend to resize an image to `width`."""
    return {"width": task.payload["width"], "url": f"/img/{task.payload.get('item', 'x')}-{task.payload['width']}.jpg"}


@handler("publish")
def publish(task):
    """The join: runs once, after every step is final, with their results in `flow_results`."""
    results = task.payload["flow_results"]
    ok = [s["result"]["url"] for s in results["steps"] if s["status"] == "success"]
    failed = [s["step_index"] for s in results["steps"] if s["status"] == "fail"]
    return {"published": ok, "failed_steps": failed, "timed_out": results["timed_out"]}


@handler("ingest")
def ingest(task):
    """Starts the media flow from a handler: one resize per width, then `publish`."""
    item = task.payload.get("item", "item-1")
    flow_id = task.start_flow(
        steps=[{"name": "resize", "payload": {"item": item, "width": w}} for w in (160, 640, 1280)],
        join={"name": "publish", "payload": {"item": item}},
        failure_policy="continue",
        timeout=300,
        entity=("item", item),
    )
    return {"flow_id": flow_id}


@handler("add")
def add(task):
    """A chain step: adds `n` to the previous step's result (0 for the first step)."""
    return (task.payload.get("previous_result") or 0) + task.payload.get("n", 1)
