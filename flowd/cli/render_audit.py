"""The audit views for people: `flowd audit task|workflow|summary` and `flowd events` lines.

The third module that imports rich (with render.py and render_top.py). Laid out to read
well at 100 columns: compact local times (no date when it is today), durations scaled to
their size, long texts cut to one line with an ellipsis.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from flowd.cli.render import STATUS_STYLE, console, first_line, line, parse_time, short_time, status

FAILED = ("failed", "timeout", "permanently_failed")
# metadata already shown in its own column (or too long for one line), and events whose
# metadata only repeats the columns
QUIET_META = {"attempt", "stage", "traceback", "type", "priority"}
QUIET_EVENTS = {"task_created", "task_claimed", "task_started", "task_retry_started"}  # claimed: before 0013
BAR = "█"


def duration(seconds: float | None) -> str:
    """`0.211s`, `12.5s`, `2m05s`, `3h12m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s:02d}s"
    h, rem = divmod(round(seconds), 3600)
    return f"{h}h{rem // 60:02d}m"


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )


def _one_line(text: str, style: str = "") -> Text:
    """A cell that never wraps: in a column rich may shrink, it is cut with an ellipsis."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _facts() -> Table:
    """A two-column key/value grid without borders."""
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="dim", no_wrap=True)
    t.add_column(overflow="ellipsis", no_wrap=True)
    return t


# column options: one line, cut with an ellipsis rather than wrapped
CUT: dict[str, Any] = {"no_wrap": True, "overflow": "ellipsis"}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def _progress_text(stage_name: Any, percent: Any, text: Any) -> str:
    pct = f"{round(float(percent), 1):g}%" if percent is not None else ""
    parts = [str(stage_name) if stage_name else "", pct, str(text or "")]
    return " ".join(p for p in parts if p)


def _event_message(e: Mapping[str, Any]) -> str:
    """What an event says: progress as `stage 30% text`, a checkpoint as `code message {metadata}`."""
    meta = e.get("metadata") or {}
    if e["event_type"] == "task_progress":
        return _progress_text(meta.get("stage_name"), meta.get("progress_percent"), meta.get("progress_text"))
    if e["event_type"] == "task_checkpoint":
        code = meta.get("code", "")
        msg = e.get("message") or ""
        rest = {k: v for k, v in meta.items() if k != "code"}
        return " ".join(p for p in (code, msg if msg != code else "", _compact(rest) if rest else "") if p)
    text = first_line(e.get("message"))
    extra = {k: v for k, v in meta.items() if k not in QUIET_META}
    if extra and e["event_type"] not in QUIET_EVENTS:
        text = f"{text} {_compact(extra)}".strip()
    return text


def _move(e: Mapping[str, Any]) -> str:
    src, dst = e.get("from_status"), e.get("to_status")
    if src == dst and src is not None:
        return str(src)
    return f"{src or '∅'} → {dst or '∅'}"


def _kind(event_type: str) -> str:
    return event_type.removeprefix("task_")


def audit_task(doc: Mapping[str, Any], now: datetime | None = None) -> None:
    """Snapshot, attempts table and events timeline of one task."""
    c = console()
    t = doc["task"]
    head = Text.assemble((f"task {t['id']} ", "bold"), (t["name"], "bold cyan"), "  ", status(t["status"]))
    head.append(f"  {t['type']}" + (f" {t['cron_expr']}" if t.get("cron_expr") else ""))
    head.append(
        f"  stage {t['stage']}  attempt {t.get('attempt', '-')}"
        f"  retry_count {t['retry_count']}  max_retries {t['max_retries']}"
    )
    c.print(head)
    facts = _facts()
    family = []
    if t.get("parent_id") is not None:
        family.append(f"parent {t['parent_id']}")
    if t.get("root_id") not in (None, t["id"]):
        family.append(f"root {t['root_id']}")
    if family:
        facts.add_row("workflow", "  ".join(family))
    when = f"created {short_time(t['created_at'], now)}  updated {short_time(t['updated_at'], now)}"
    if t["status"] == "pending" and t.get("next_run_time"):
        when += f"  next run {short_time(t['next_run_time'], now)}"
    facts.add_row("time", when)
    if t.get("worker_id"):
        facts.add_row("worker", t["worker_id"])
    progress = _progress_text(t.get("current_stage_name"), t.get("progress_percent"), t.get("progress_text"))
    if progress:
        facts.add_row("progress", progress)
    if t.get("last_event_type"):
        facts.add_row("last event", f"{t['last_event_type']} at {short_time(t.get('last_event_time'), now)}")
    if t.get("payload"):
        facts.add_row("payload", _compact(t["payload"]))
    if t.get("result") is not None:
        facts.add_row("result", _compact(t["result"]))
    if t.get("error"):
        facts.add_row("error", Text(first_line(t["error"]), style="red"))
    c.print(facts)

    c.print()
    c.print(_attempts_table(doc["attempts"], now))
    c.print()
    c.print(_events_table(doc["events"], now))


def _shown(page: Mapping[str, Any]) -> str:
    """`12`, or `50 of 120 from 0` when the page is not everything."""
    if not page["has_more"] and page["offset"] == 0:
        return f"{page['total']}"
    return f"{len(page['items'])} of {page['total']} from {page['offset']}"


def _attempts_table(attempts: Mapping[str, Any], now: datetime | None, with_task: bool = False) -> Table:
    at = _table(f"attempts ({_shown(attempts) if with_task else attempts['total']})")
    if with_task:
        at.add_column("task", justify="right", no_wrap=True)
    at.add_column("#", justify="right", no_wrap=True)
    at.add_column("stage", justify="right", no_wrap=True)
    at.add_column("worker", **CUT, max_width=24)
    at.add_column("started", no_wrap=True)
    at.add_column("duration", justify="right", no_wrap=True)
    at.add_column("outcome", no_wrap=True)
    at.add_column("error")
    for a in attempts["items"]:
        cells: list[Any] = [str(a["task_id"])] if with_task else []
        at.add_row(
            *cells,
            str(a["attempt"]),
            str(a.get("stage", "")),
            a.get("worker_id") or "-",
            short_time(a["started_at"], now),
            duration(a.get("duration")) if a.get("ended_at") else "running",
            status(a.get("outcome")) if a.get("outcome") else Text("open", style="yellow"),
            _one_line(first_line(a.get("error")), "red"),
        )
    return at


def _events_table(events: Mapping[str, Any], now: datetime | None, with_task: bool = False) -> Table:
    ev = _table(f"events ({_shown(events)})")
    ev.add_column("time", no_wrap=True)
    if with_task:
        ev.add_column("task", justify="right", no_wrap=True)
    ev.add_column("event", no_wrap=True)
    ev.add_column("from → to", no_wrap=True)
    ev.add_column("stage", justify="right", no_wrap=True)
    ev.add_column("att", justify="right", no_wrap=True)
    ev.add_column("message")
    for e in events["items"]:
        kind = e["event_type"]
        style = "red" if kind in ("task_failed", "task_timed_out", "task_permanently_failed") else ""
        if kind in ("task_checkpoint", "task_progress"):
            style = "cyan"
        cells: list[Any] = [str(e["task_id"])] if with_task else []
        ev.add_row(
            short_time(e["created_at"], now),
            *cells,
            Text(_kind(kind), style=style),
            _move(e),
            "" if e.get("stage") is None else str(e["stage"]),
            "" if not e.get("attempt") else str(e["attempt"]),
            _one_line(_event_message(e)),
        )
    return ev


def workflow_page(doc: Mapping[str, Any], now: datetime | None = None) -> None:
    """`flowd audit workflow ROOT --attempts` or `--events`: the root's line, then the page."""
    c = console()
    t = doc["task"]
    c.print(Text.assemble((f"workflow {t['id']} ", "bold"), (t["name"], "bold cyan"), "  ", status(t["status"])))
    if "attempts" in doc:
        c.print(_attempts_table(doc["attempts"], now, with_task=True))
    else:
        c.print(_events_table(doc["events"], now, with_task=True))


def _spent(attempts: Sequence[Any]) -> float:
    return float(sum((a.ended_at - a.started_at).total_seconds() for a in attempts if a.ended_at is not None))


def workflow_tree(root: Any, tasks: Sequence[Any], attempts: Mapping[int, Sequence[Any]]) -> None:
    """The workflow as a tree: name, id, status, stage, attempts, time spent; failures in red."""
    kids: dict[int, list[Any]] = {}
    for t in sorted(tasks, key=lambda t: t.id):
        if t.parent_id is not None and t.id != root.id:
            kids.setdefault(t.parent_id, []).append(t)

    def label(t: Any) -> Text:
        failed = t.status.value in FAILED
        mine = attempts.get(t.id, [])
        txt = Text.assemble(
            (t.name, "bold red" if failed else "bold"),
            (f" #{t.id} ", "dim"),
            status(t.status.value),
            f"  stage {t.stage}  {len(mine)} attempt{'s' if len(mine) != 1 else ''}  {duration(_spent(mine))}",
        )
        if t.status.value == "running":
            progress = _progress_text(t.current_stage_name, t.progress_percent, t.progress_text)
            if progress:
                txt.append(f"  {progress}", style="yellow")
        if failed and t.error:
            txt.append(f"  {first_line(t.error)}", style="red")
        txt.no_wrap = True
        txt.overflow = "ellipsis"
        return txt

    tree = Tree(label(root))
    # iterative: a deep workflow must not hit the recursion limit
    stack: list[tuple[Tree, Any]] = [(tree, root)]
    while stack:
        node, t = stack.pop()
        for k in kids.get(t.id, []):
            stack.append((node.add(label(k)), k))
    c = console()
    c.print(tree)
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    c.print(Text("  ".join(f"{n} {s}" for s, n in sorted(counts.items())), style="dim"))


def _gantt(doc: Mapping[str, Any], c: Console) -> Table:
    """The critical path as bars on one time axis: from the root's creation to the workflow's end."""
    cp = doc["critical_path"]
    origin = parse_time(doc["timing"]["created_at"])
    nodes = cp["nodes"]
    ends = [
        (parse_time(n["started_at"]) - origin).total_seconds() + n["duration_seconds"] for n in nodes if n["started_at"]
    ]
    span = max([doc["timing"].get("workflow_duration_seconds") or 0.0, *ends, 1e-3])
    width = max(20, min(60, c.width - 48))
    total = doc["timing"].get("workflow_duration_seconds")
    title = f"critical path: {duration(cp['total_duration_seconds'])} of work"
    if total is not None:
        title += f" in a workflow of {duration(total)}"
    g = _table(title)
    g.add_column("task", justify="right", no_wrap=True)
    g.add_column("name", **CUT, max_width=18)
    g.add_column("stage", justify="right", no_wrap=True)
    g.add_column("took", justify="right", no_wrap=True)
    axis_end = duration(span)
    g.add_column(f"0{axis_end:>{width - 1}}", no_wrap=True, min_width=width, max_width=width)
    for n in nodes:
        bar = Text(" " * width)
        if n["started_at"]:
            start = (parse_time(n["started_at"]) - origin).total_seconds()
            lead = min(width - 1, int(start / span * width))
            length = max(1, round(n["duration_seconds"] / span * width))
            length = min(length, width - lead)
            style = STATUS_STYLE.get(n["outcome"] or "running", "yellow")
            bar = Text.assemble(" " * lead, (BAR * length, style), " " * (width - lead - length))
        g.add_row(str(n["task_id"]), n["name"], str(n["stage"]), duration(n["duration_seconds"]), bar)
    return g


def summary(doc: Mapping[str, Any], now: datetime | None = None) -> None:
    """Counts, timing, root stages, failures, the critical path as a timeline, slowest attempts."""
    c = console()
    root, tm, tot = doc["root_task"], doc["timing"], doc["totals"]
    c.print(
        Text.assemble(
            (f"workflow {root['id']} ", "bold"),
            (root["name"], "bold cyan"),
            "  ",
            status(root["status"]),
            f"  {tot['tasks']} tasks  {tot['attempts']} attempts  {tot['events']} events  "
            f"{tot['checkpoints']} checkpoints",
        )
    )
    facts = _facts()
    origin = parse_time(tm["created_at"])

    def since_start(iso: str | None) -> str:
        return f"+{duration((parse_time(iso) - origin).total_seconds())}" if iso else "-"

    facts.add_row(
        "timing",
        f"created {short_time(tm['created_at'], now)}  first start {since_start(tm['first_started_at'])}  "
        f"last end {since_start(tm['last_ended_at'])}  duration {duration(tm['workflow_duration_seconds'])}",
    )
    statuses = Text()
    for i, (s, n) in enumerate(doc["status_counts"].items()):
        statuses.append(", " if i else "")
        statuses.append(f"{s} {n}", style=STATUS_STYLE.get(s, ""))
    facts.add_row("tasks", statuses)
    outcomes = ", ".join(f"{k} {v}" for k, v in doc["attempt_outcome_counts"].items()) or "none yet"
    facts.add_row("attempts", outcomes)
    facts.add_row("workers", ", ".join(doc["workers"]) or "-")
    c.print(facts)

    if doc["stage_timings"]:
        st = _table("root stages")
        for col in ("stage", "attempt", "started", "took", "outcome", "worker"):
            right = col in ("stage", "attempt", "took")
            st.add_column(col, justify="right" if right else "left", no_wrap=True, overflow="ellipsis")
        for s in doc["stage_timings"]:
            st.add_row(
                str(s["stage"]),
                str(s["attempt"]),
                short_time(s["started_at"], now),
                duration(s["duration_seconds"]) if s["ended_at"] else "running",
                status(s["outcome"]) if s["outcome"] else Text("open", style="yellow"),
                s["worker_id"] or "-",
            )
        c.print()
        c.print(st)
    if doc["failed_tasks"]:
        ft = _table(f"failed tasks ({len(doc['failed_tasks'])})")
        ft.add_column("task", justify="right", no_wrap=True)
        ft.add_column("name", **CUT, max_width=24)
        ft.add_column("status", no_wrap=True)
        ft.add_column("error")
        for f in doc["failed_tasks"]:
            ft.add_row(str(f["task_id"]), f["name"], status(f["status"]), _one_line(first_line(f["error"]), "red"))
        c.print()
        c.print(ft)
    c.print()
    c.print(_gantt(doc, c))
    if doc["slowest_attempts"]:
        sl = _table("slowest attempts")
        for col in ("task", "attempt", "stage", "worker", "started", "took", "outcome"):
            right = col in ("task", "attempt", "stage", "took")
            sl.add_column(col, justify="right" if right else "left", no_wrap=True, overflow="ellipsis")
        for a in doc["slowest_attempts"]:
            sl.add_row(
                str(a["task_id"]),
                str(a["attempt"]),
                str(a.get("stage", "")),
                a.get("worker_id") or "-",
                short_time(a["started_at"], now),
                duration(a["duration_seconds"]) if a.get("ended_at") else f"{duration(a['duration_seconds'])}…",
                status(a.get("outcome")) if a.get("outcome") else Text("open", style="yellow"),
            )
        c.print()
        c.print(sl)


def event_line(e: Mapping[str, Any], now: datetime | None = None) -> None:
    """One audit event as one line (for `flowd events`), cut to the terminal's width."""
    att = f"#{e['attempt']}" if e.get("attempt") else ""
    kind = _kind(e["event_type"])
    head = f"{short_time(e['created_at'], now):>12}  {e['task_id']:>6} {att:<4} {kind:<18} {_move(e):<20}"
    room = max(20, shutil.get_terminal_size((120, 24)).columns - len(head) - 1)
    msg = _event_message(e)
    line(f"{head} {msg if len(msg) <= room else msg[: room - 1] + '…'}".rstrip())
