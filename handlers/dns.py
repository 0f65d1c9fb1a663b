"""Example plugin: a constraint group declared in code (see README "Constraints")."""

import time

from flowd import constraint, handler

# one update per domain at a time, in submission order, and 2 s between two updates of a domain
domain_mutex = constraint("domain-mutex", key="{payload[domain]}", max_concurrent=1, cooldown=2)


@handler("update_dns", constraints=[domain_mutex])
def update_dns(task):
    """Pretend to push a DNS record; tasks of one domain never overlap."""
    time.sleep(0.2)
    return {"domain": task.payload["domain"], "record": task.payload.get("record", "A 192.0.2.1")}
