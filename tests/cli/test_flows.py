"""`flowd flow start | chain | show` through the CLI, run by an in-process worker."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flowd.manager import TaskManager
from tests.cli.conftest import Result

Run = Callable[..., Result]


def _drain() -> None:
    m = TaskManager(db_url=os.environ["FLOWD_DB_URL"], handlers_dir=os.environ["FLOWD_HANDLERS_DIR"])
    try:
        m.make_worker().run_until_idle()
    finally:
        m.close()


def test_flow_start__steps_then_one_join_with_their_results(flowd: Run) -> None:
    r = flowd(
        "flow", "start", "--step", 'echo:{"n": 1}', "--step", "echo", "--join", 'echo:{"j": true}', "--timeout", "60"
    )
    assert r.code == 0 and r.out == "1\n"
    _drain()
    doc = flowd("flow", "show", "1", "--json").json()
    assert doc["status"] == "joined" and doc["outcome"] == "completed" and doc["deadline"].endswith("Z")
    assert [(s["step_index"], s["status"], s["result"]) for s in doc["steps"]] == [
        (0, "completed", {"n": 1}),
        (1, "completed", {}),
    ]
    res = doc["join"]["result"]
    assert res["j"] is True and [s["status"] for s in res["flow_results"]["steps"]] == ["success", "success"]
    human = flowd("flow", "show", "1")
    assert human.code == 0 and "flow 1: completed" in human.out and "join" in human.out


def test_flow_chain__passes_previous_results_along(flowd: Run) -> None:
    doc = flowd("flow", "chain", "--step", 'echo:{"a": 1}', "--step", "echo", "--name", "c", "--json").json()
    assert doc["kind"] == "chain" and doc["name"] == "c" and len(doc["steps"]) == 1
    _drain()
    doc = flowd("flow", "show", str(doc["id"]), "--json").json()
    assert doc["status"] == "completed" and doc["result"] == {"previous_result": {"a": 1}}


def test_flow_start__bad_input_exits_2_and_writes_nothing(flowd: Run) -> None:
    bad = [
        ("--step", "echo:{nope", "--join", "echo"),
        ("--step", "nope", "--join", "echo"),
        ("--step", "echo", "--join", "echo", "--failure-policy", "maybe"),
        ("--step", "echo", "--join", "echo", "--timeout", "-1"),
        ("--step", "echo", "--join", "echo", "--entity", "no-colon"),
    ]
    for args in bad:
        r = flowd("flow", "start", *args)
        assert r.code == 2 and r.out == "" and r.err.startswith("flowd: error:") and r.err.count("\n") == 1, args
    assert flowd("list", "--json").json()["total"] == 0
    missing = flowd("flow", "show", "7")
    assert missing.code == 1 and "flow 7 not found" in missing.err


def test_constraints__config_groups_and_keys_in_use(flowd: Run, tmp_path: Path) -> None:
    (tmp_path / "flowd.toml").write_text(
        '[constraints.domain-mutex]\nkey = "{payload[domain]}"\nmax_concurrent = 1\ncooldown = 30\n'
        'applies_to = ["echo"]\n'
    )
    for _ in range(2):
        assert flowd("submit", "echo", '{"domain": "a.com"}').code == 0
    assert flowd("submit", "echo", "{}").code == 0  # no domain: exempt
    _drain()
    doc = flowd("constraints", "--json").json()
    assert doc["groups"] == [
        {
            "name": "domain-mutex",
            "key": "{payload[domain]}",
            "max_concurrent": 1,
            "cooldown": 30.0,
            "applies_to": ["echo"],
            "source": "config",
        }
    ]
    (key,) = doc["keys"]
    assert (key["key"], key["running"], key["pending"]) == ("a.com", 0, 1) and 25 < key["cooldown_left"] <= 30
    statuses = [t["status"] for t in flowd("list", "--json").json()["items"]]
    assert sorted(statuses) == ["completed", "completed", "pending"]
    human = flowd("constraints")
    assert human.code == 0 and "{payload[domain]}" in human.out and "a.com" in human.out
