"""Labels, stats by label, debounce and entities through the CLI."""

from __future__ import annotations

from collections.abc import Callable

from tests.cli.conftest import Result

Run = Callable[..., Result]


def test_stats_by_label__counts_by_the_label_value(flowd: Run) -> None:
    for tenant in ("acme", "acme", "globex"):
        assert flowd("submit", "echo", "{}", "--label", f"tenant={tenant}", "--label", "tier=gold").code == 0
    assert flowd("submit", "echo", "{}").code == 0
    items = flowd("stats", "--by-label", "tenant", "--json").json()["items"]
    assert [(i["value"], i["name"], i["status"], i["count"]) for i in items] == [
        ("acme", "echo", "pending", 2),
        ("globex", "echo", "pending", 1),
        (None, "echo", "pending", 1),
    ]
    assert all(i["label"] == "tenant" for i in items)
    listed = flowd("list", "--label", "tenant=acme", "--json").json()
    assert listed["total"] == 2 and all(t["labels"]["tenant"] == "acme" for t in listed["items"])
    human = flowd("stats", "--by-label", "tenant")
    assert human.code == 0 and "globex" in human.out and "label tenant" in human.out
    assert flowd("stats", "--by-label", " ").code == 2


def test_submit_debounce__a_burst_is_one_pending_task_with_the_last_payload(flowd: Run) -> None:
    ids = {flowd("submit", "echo", f'{{"v": {v}}}', "--key", "u1", "--debounce", "30").out for v in range(3)}
    assert ids == {"1\n"}
    t = flowd("show", "1", "--json").json()
    assert t["payload"] == {"v": 2} and t["status"] == "pending" and t["last_event_type"] == "task_updated"
    r = flowd("submit", "echo", "{}", "--debounce", "30")
    assert r.code == 2 and "--key" in r.err and r.out == ""


def test_entity__submit_with_entity_then_ask_what_happens_to_it(flowd: Run) -> None:
    assert flowd("submit", "echo", '{"a": 1}', "--entity", "user:u_123").out == "1\n"
    doc = flowd("entity", "user", "u_123", "--json").json()
    assert doc["entity"] == {"type": "user", "id": "u_123"}
    assert [(t["task_id"], t["name"], t["status"]) for t in doc["tasks"]] == [(1, "echo", "scheduled")]
    assert flowd("show", "1", "--json").json()["entity"] == {"type": "user", "id": "u_123"}
    human = flowd("entity", "user", "u_123")
    assert human.code == 0 and "scheduled" in human.out and "user:u_123" in human.out
    bad = flowd("submit", "echo", "{}", "--entity", "u_123")
    assert bad.code == 2 and "TYPE:ID" in bad.err
