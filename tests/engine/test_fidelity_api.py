"""The reference APIs as their users write them: `use` shapes, `task.audit` / `task.progress`
forms, progress and checkpoint hooks, `should_run` — on every database."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowd import handler
from flowd.errors import BadInput
from flowd.manager import TaskManager
from tests.engine.conftest import drain, event_types, outcomes

Make = Callable[..., TaskManager]


def noop(task: Any) -> Any:
    return {"ok": True}


# -- use(): the flat shape, the alias, unknown keys, unuse's count -------------------------


def test_use__flat_shape_sets_every_option(mgr: TaskManager) -> None:
    mgr.use(
        "send",
        {
            "handler": noop,
            "timeout": 120,
            "max_retries": 2,
            "retry_interval": 5,
            "priority": 3,
            "max_concurrent_tasks": 2,
            "description": "sends one e-mail",
        },
    )
    tid = mgr.submit("send", {})
    t = mgr.get_task(tid)
    assert (t.timeout, t.max_retries, t.retry_interval, t.priority) == (120.0, 2, 5.0, 3)
    spec = mgr.registry().get("send")
    assert spec is not None and spec.max_concurrent == 2 and spec.options["description"] == "sends one e-mail"
    drain(mgr)
    assert mgr.get_task(tid).status == "completed"


def test_use__nested_options_and_bulk_form_still_work(mgr: TaskManager) -> None:
    mgr.use({"a": noop, "b": {"handler": noop, "options": {"timeout": 9}}, "c": {"handler": noop, "priority": 1}})
    assert mgr.get_task(mgr.submit("b", {})).timeout == 9.0
    assert mgr.get_task(mgr.submit("c", {})).priority == 1
    assert mgr.get_task(mgr.submit("a", {})).timeout == 60.0  # the settings' default


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"handler": noop, "timout": 120}, r"unknown handler option\(s\) \['timout'\]"),
        ({"handler": noop, "schema": {}}, r"unknown handler option\(s\) \['schema'\]"),
        ({"timeout": 3}, "needs a 'handler' function"),
        ({"handler": noop, "max_concurrent": 1, "max_concurrent_tasks": 2}, "not both"),
        ({"handler": noop, "timeout": -1}, "timeout must be > 0"),
        ({"handler": noop, "description": 7}, "description must be a string"),
    ],
)
def test_use__refuses_what_it_would_drop(mgr: TaskManager, config: dict[str, Any], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        mgr.use("send", config)
    assert "send" not in mgr.registry()


def test_use__bulk_form_registers_nothing_when_one_entry_is_bad(mgr: TaskManager) -> None:
    with pytest.raises(BadInput, match="bogus"):
        mgr.use({"good": noop, "bad": {"handler": noop, "bogus": 1}})
    assert "good" not in mgr.registry()


def test_unuse__returns_how_many_it_removed(mgr: TaskManager) -> None:
    mgr.use({"a": noop, "b": noop, "c": noop})
    assert mgr.unuse("a") == 1
    assert mgr.unuse("a") == 0
    assert mgr.unuse(["b", "c", "nope"]) == 2
    assert mgr.registry().names() == []


def test_max_concurrent_tasks_alias__caps_running_attempts(mgr: TaskManager) -> None:
    import threading

    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(task: Any) -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1

    mgr.use("slow", {"handler": slow, "max_concurrent_tasks": 2})
    mgr.submit_many([("slow", {})] * 8)
    drain(mgr)
    assert state["peak"] == 2


# -- task.audit / task.progress: the reference's forms -------------------------------------


def test_audit_and_progress__reference_forms(mgr: TaskManager) -> None:
    def h(task: Any) -> None:
        task.audit("payload_validated", {"message": "Payload validated", "metadata": {"source": "crm"}})
        task.audit({"code": "remote_call_started", "message": "Remote call started", "metadata": {"p": 1}})
        task.audit("plain", message="kw form", metadata={"x": 1})
        task.progress(
            "Downloading source data", {"stage_name": "download", "progress_percent": 20, "metadata": {"c": 1}}
        )
        task.progress(
            {
                "stage_name": "transform",
                "progress_text": "Transforming records",
                "progress_percent": 75,
                "message": "Transform stage running",
                "metadata": {"transformed": 15},
            }
        )

    mgr.use("imp", h)
    tid = mgr.submit("imp", {})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status == "completed"
    assert (t.current_stage_name, t.progress_text, t.progress_percent) == ("transform", "Transforming records", 75.0)
    events = mgr.task_audit(tid, event_types=["task_checkpoint", "task_progress"])["events"]["items"]
    got = [(e["event_type"], e["message"], e["metadata"]) for e in events]
    assert got == [
        ("task_checkpoint", "Payload validated", {"source": "crm", "code": "payload_validated"}),
        ("task_checkpoint", "Remote call started", {"p": 1, "code": "remote_call_started"}),
        ("task_checkpoint", "kw form", {"x": 1, "code": "plain"}),
        (
            "task_progress",
            "Downloading source data",
            {
                "stage_name": "download",
                "progress_text": "Downloading source data",
                "progress_percent": 20.0,
                "metadata": {"c": 1},
            },
        ),
        (
            "task_progress",
            "Transform stage running",
            {
                "stage_name": "transform",
                "progress_text": "Transforming records",
                "progress_percent": 75.0,
                "metadata": {"transformed": 15},
            },
        ),
    ]


BAD_CALLS: list[tuple[Callable[[Any], Any], str]] = [
    (lambda t: t.audit("code", {"message": {"not": "text"}}), "TypeError: checkpoint message must be a string"),
    (lambda t: t.audit("code", {"msg": "x"}), "ValueError: unknown checkpoint key(s) ['msg']"),
    (lambda t: t.audit({"message": "no code"}), "TypeError: checkpoint code must be a string, not NoneType"),
    (lambda t: t.audit("Bad Code"), "ValueError: checkpoint code 'Bad Code' must be lower snake_case"),
    (lambda t: t.audit("code", {"message": "m"}, {"a": 1}), "TypeError: audit(code, {...}): put metadata inside"),
    (lambda t: t.audit("code", metadata=[1]), "TypeError: checkpoint metadata must be a dict, not list"),
    (lambda t: t.progress("t", {"stage_name": "Download Phase"}), "ValueError: stage_name 'Download Phase' must be"),
    (lambda t: t.progress({"bogus": 1}), "ValueError: unknown progress key(s) ['bogus']"),
    (lambda t: t.progress({"progress_percent": 120}), "ValueError: progress percent must be between 0 and 100"),
    (lambda t: t.progress({"progress_percent": "half"}), "TypeError: progress_percent must be a number"),
    (lambda t: t.progress(text=5), "TypeError: progress text must be a string, not int"),
    (lambda t: t.progress({"message": "only a message"}), "ValueError: progress needs at least one of"),
    (lambda t: t.progress("t", {"stage_name": "a"}, 50), "TypeError: progress(text, {...}): put every field"),
]


@pytest.mark.parametrize(("call", "error"), BAD_CALLS)
def test_audit_and_progress__misuse_fails_the_attempt_with_a_clear_error(
    mgr: TaskManager, call: Callable[[Any], Any], error: str
) -> None:
    mgr.use("bad", {"handler": lambda task: call(task), "max_retries": 1})
    tid = mgr.submit("bad", {})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status == "permanently_failed"
    assert t.error is not None and t.error.startswith(error), t.error
    assert "task_checkpoint" not in event_types(mgr, tid) and "task_progress" not in event_types(mgr, tid)


def test_progress__keyword_form_and_declared_steps_keep_working(mgr: TaskManager) -> None:
    def h(task: Any) -> None:
        task.progress("half", stage_name="copy", percent=50)
        task.progress("positional", "copy_more", 60)
        task.step("Build Step")  # a declared step name is not held to snake_case

    mgr.use("k", {"handler": h, "steps": {"Build Step": 1}})
    tid = mgr.submit("k", {})
    drain(mgr)
    t = mgr.get_task(tid)
    assert t.status == "completed" and t.current_stage_name == "Build Step" and t.progress_percent == 100.0
    events = mgr.task_audit(tid, event_types=["task_progress"])["events"]["items"]
    assert [e["metadata"]["stage_name"] for e in events] == ["copy", "copy_more", "Build Step"]


# -- hooks on progress and checkpoints, with tag and labels --------------------------------

HOOKS = """
import json
from flowd import TaskManager, handler, on

OUT = {out!r}
DB = {db!r}

@handler("work")
def work(task):
    task.audit("fetched", {{"message": "got it", "metadata": {{"n": 1}}}})
    task.progress("halfway", {{"stage_name": "copy", "progress_percent": 50}})
    task.start_flow([{{"name": "part"}}], {{"name": "part"}})
    return 1

@handler("part")
def part(task):
    return 0

def note(event, seen):
    with open(OUT, "a") as f:
        f.write(json.dumps({{**event, "seen": seen}}) + "\\n")

@on("task_checkpoint")
@on("task_progress")
@on("flow_started")
@on("task_completed")
def hook(event):
    if event["name"] != "work":
        return
    # after the commit: a fresh connection already sees the event the hook is about
    m = TaskManager(db_url=DB, handlers_dir="/nonexistent")
    try:
        kinds = [e["event_type"] for e in m.task_audit(event["task_id"])["events"]["items"]]
    finally:
        m.close()
    note(event, event["event_type"] in kinds)
"""


def wait_lines(out: Path, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        if len(got) >= n:
            return got
        time.sleep(0.02)
    raise AssertionError(f"expected {n} hook lines, got {out.read_text() if out.exists() else 'none'}")


def test_hooks__progress_and_checkpoint_fire_after_commit_with_tag_and_labels(
    db_url: str, make_manager: Make, tmp_path: Path
) -> None:
    out = tmp_path / "hooks.jsonl"
    (tmp_path / "handlers" / "hooked.py").write_text(textwrap.dedent(HOOKS.format(out=str(out), db=db_url)))
    m = make_manager(db_url)
    tid = m.submit("work", {}, tag="batch-7", labels={"tenant": "acme"})
    drain(m)
    got = wait_lines(out, 4)
    assert [g["event_type"] for g in got] == ["task_checkpoint", "task_progress", "flow_started", "task_completed"]
    assert all(g["seen"] for g in got), "a hook ran before its event was committed"
    assert all(g["task_id"] == tid and g["tag"] == "batch-7" and g["labels"] == {"tenant": "acme"} for g in got)
    assert got[0]["metadata"] == {"n": 1, "code": "fetched"} and got[0]["message"] == "got it"
    assert got[1]["metadata"]["stage_name"] == "copy" and got[1]["metadata"]["progress_percent"] == 50.0


# -- description --------------------------------------------------------------------------


def test_handler_description__accepted_and_published(mgr: TaskManager) -> None:
    @handler("described", description="Resizes one image", timeout=5)
    def described(task: Any) -> None:
        return None

    mgr.use("plain", {"handler": noop, "description": "in code"})
    w = mgr.make_worker()
    w.run_once()
    published = {h.name: h.options for h in mgr.fleet_handlers()}
    assert published["plain"]["description"] == "in code"
    with pytest.raises(ValueError, match="description must be a string"):
        handler("x", description=["no"])  # type: ignore[arg-type]


# -- should_run ---------------------------------------------------------------------------


def test_should_run__false_completes_without_running_with_a_skipped_event(mgr: TaskManager) -> None:
    ran: list[int] = []

    def work(task: Any) -> str:
        ran.append(task.payload["n"])
        return "ran"

    mgr.use("maybe", {"handler": work, "should_run": lambda task: task.payload["n"] % 2 == 0})
    even, odd = mgr.submit("maybe", {"n": 2}), mgr.submit("maybe", {"n": 3})
    drain(mgr)
    assert ran == [2]
    assert mgr.get_task(even).result == "ran"
    skipped = mgr.get_task(odd)
    assert skipped.status == "completed" and skipped.result is None
    assert event_types(mgr, odd)[-2:] == ["task_skipped", "task_completed"]
    assert "task_skipped" not in event_types(mgr, even)
    assert outcomes(mgr, odd) == ["completed"]


def test_should_run__async_check_and_a_non_bool_answer(mgr: TaskManager) -> None:
    async def work(task: Any) -> int:
        return 1

    async def check(task: Any) -> bool:
        return False

    mgr.use("a", {"handler": work, "should_run": check})
    mgr.use("b", {"handler": noop, "should_run": lambda task: None, "max_retries": 1})
    a, b = mgr.submit("a", {}), mgr.submit("b", {})
    drain(mgr)
    assert mgr.get_task(a).result is None and "task_skipped" in event_types(mgr, a)
    t = mgr.get_task(b)
    assert t.status == "permanently_failed"
    assert t.error == "TypeError: should_run must return True or False, not NoneType"


def test_should_run__declared_with_the_decorator_in_a_plugin(db_url: str, make_manager: Make, tmp_path: Path) -> None:
    (tmp_path / "handlers" / "gated.py").write_text(
        "from flowd import handler\n\n"
        "@handler('gated', should_run=lambda task: not task.payload.get('skip'), description='gated work')\n"
        "def gated(task):\n    return 'ran'\n"
    )
    m = make_manager(db_url)
    run, skip = m.submit("gated", {}), m.submit("gated", {"skip": True})
    drain(m)
    assert m.get_task(run).result == "ran"
    assert m.get_task(skip).result is None and "task_skipped" in event_types(m, skip)
    # the check is code: it is not published with the options
    assert "should_run" not in next(h for h in m.fleet_handlers() if h.name == "gated").options
