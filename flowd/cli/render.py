"""Everything the CLI prints: one JSON document with --json, rich tables and trees for people.

The only module that imports rich. Colours appear only on a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "scheduled": "cyan",
    "processing": "yellow",
    "executed": "green",
    "pending": "cyan",
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "timeout": "red",
    "permanently_failed": "bold red",
    "paused": "magenta",
    "suspended": "blue",
    "active": "green",
    "superseded": "yellow",
    "dead": "red",
}


def console(width: int | None = None) -> Console:
    return Console(highlight=False, soft_wrap=False, width=width)


def watched() -> bool:
    """A person is watching: both output streams are terminals (not a pipe, file or cron job)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int | None], None]]:
    """A transient progress bar on stderr while a long operation runs; yields `update(done, total)`.

    Only when a person watches: in scripts (or with `quiet`, e.g. --json) it draws nothing,
    so the command's output is exactly what it was. A total of None shows a spinner and a count.
    """
    with phases(description, quiet=quiet) as update:
        yield lambda done, total: update(description, done, total)


@contextlib.contextmanager
def phases(description: str = "", *, quiet: bool = False) -> Iterator[Callable[[str, int, int | None], None]]:
    """`progress()` for an operation in named steps: yields `update(step, done, total)`."""
    if quiet or not watched():
        yield lambda step, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(step: str, done: int, total: int | None) -> None:
            bar.update(task, description=step, completed=done, total=total)

        yield update


def emit_json(doc: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def status(s: str | None) -> Text:
    return Text(s or "-", style=STATUS_STYLE.get(s or "", ""))


def local_time(iso: str | None) -> str:
    """An ISO UTC timestamp shown in this terminal's local zone."""
    if not iso:
        return "-"
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d} {dt.strftime('%Z')}"


def parse_time(iso: str) -> datetime:
    """An ISO timestamp of the JSON shapes as an aware datetime."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def short_time(iso: str | None, now: datetime | None = None) -> str:
    """A timestamp in local time, as short as is unambiguous next to `now`.

    Today: `17:41:55.123`; this year: `Nov 22 17:41:55.123`; before: `2025-11-22 17:41`.
    """
    if not iso:
        return "-"
    dt = parse_time(iso).astimezone()
    ref = (now or datetime.now(UTC)).astimezone()
    ms = f".{dt.microsecond // 1000:03d}"
    if dt.date() == ref.date():
        return dt.strftime("%H:%M:%S") + ms
    if dt.year == ref.year:
        return dt.strftime("%b %d %H:%M:%S") + ms
    return dt.strftime("%Y-%m-%d %H:%M")


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def task_detail(t: dict[str, Any], steps: dict[str, float] | None = None) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "id",
        "name",
        "type",
        "status",
        "stage",
        "priority",
        "tag",
        "labels",
        "cron_expr",
        "cron_tz",
        "key",
        "parent_id",
        "root_id",
        "attempt",
        "retry_count",
        "recoveries",
        "max_retries",
        "retry_interval",
        "timeout",
        "next_run_time",
        "worker_id",
        "current_stage_name",
        "progress_text",
        "progress_percent",
        "last_event_type",
        "last_event_time",
        "created_at",
        "updated_at",
        "flow_id",
        "flow_step",
        "payload",
        "result",
        "error",
    ):
        v = t.get(key)
        if key == "status":
            table.add_row(key, status(v))
        elif key.endswith(("_time", "_at")):
            table.add_row(key, local_time(v))
        elif key in ("payload", "result", "labels"):
            table.add_row(key, json.dumps(v, default=str))
        else:
            table.add_row(key, "-" if v is None else str(v))
    if steps:
        # Text, not markup: a step named like a style tag must print as given
        current = t.get("current_stage_name")
        marks = Text()
        for i, (name, weight) in enumerate(steps.items()):
            marks.append(" → " if i else "")
            marks.append(f"{name} {weight:g}", style="bold reverse" if name == current else "")
        table.add_row("steps", marks)
    console().print(table)


def progress_cell(t: dict[str, Any], bar: int = 8) -> Text:
    """A running task's progress on one line: a small bar, the percentage, stage name and text."""
    pct = t.get("progress_percent")
    cell = Text(no_wrap=True, overflow="ellipsis")
    if pct is not None:
        filled = round(max(0.0, min(100.0, float(pct))) / 100 * bar)
        cell.append("█" * filled, style="yellow")
        cell.append("░" * (bar - filled), style="dim")
        cell.append(f" {pct:>3.0f}%")
    words = " ".join(str(t[k]) for k in ("current_stage_name", "progress_text") if t.get(k))
    if words:
        cell.append(f" {words}")
    return cell


def constraints(doc: dict[str, Any]) -> None:
    """`flowd constraints`: the groups, then the keys in use."""
    c = console()
    groups = Table(title="groups", box=None, pad_edge=False, title_justify="left")
    for col in ("group", "key", "max", "cooldown", "applies to", "source"):
        groups.add_column(col)
    for g in doc["groups"]:
        applies = ", ".join(g["applies_to"]) or "every task"
        row = (g["name"], g["key"], str(g["max_concurrent"]), f"{g['cooldown']:g}s", applies, g["source"])
        groups.add_row(*(Text(v) for v in row))  # templates like {payload[domain]} are not markup
    c.print(groups)
    keys = Table(title="keys in use", box=None, pad_edge=False, title_justify="left")
    for col in ("group", "key", "running", "pending", "cooldown left"):
        keys.add_column(col)
    for k in doc["keys"]:
        left = f"{k['cooldown_left']:.1f}s" if k["cooldown_left"] else "-"
        cells = (k["group"], k["key"], f"{k['running']}/{k['max_concurrent']}", str(k["pending"]), left)
        keys.add_row(*(Text(v) for v in cells))
    c.print(keys)


def entity(doc: dict[str, Any]) -> None:
    """`flowd entity TYPE ID`: one line per task, newest first."""
    e = doc["entity"]
    c = console()
    c.print(Text(f"{e['type']}:{e['id']}: {len(doc['tasks'])} task(s)"))
    table = Table(box=None, pad_edge=False)
    for col in ("task", "name", "status", "updated", "result / error"):
        table.add_column(col)
    for t in doc["tasks"]:
        detail = _short(t["error"]) if t["status"] == "failed" else _short(t["result"])
        table.add_row(str(t["task_id"]), t["name"], status(t["status"]), local_time(t["updated_at"]), detail)
    c.print(table)


def flow_detail(f: dict[str, Any]) -> None:
    """`flowd flow show`: the flow's outcome, then one line per step and the join."""
    c = console()
    name = f" {f['name']}" if f.get("name") else ""
    head = Text(f"{f['kind']} {f['id']}{name}: ")
    head.append(status(f["outcome"]))
    policy = f"policy {f['failure_policy']}, " if f["kind"] == "flow" else ""
    head.append(f"  {policy}{len(f['steps'])}/{f['step_count']} steps created")
    if f.get("deadline"):
        head.append(f", deadline {local_time(f['deadline'])}")
    if f.get("entity"):
        head.append(f", entity {f['entity']['type']}:{f['entity']['id']}")
    c.print(head)
    table = Table(box=None, pad_edge=False)
    for col in ("step", "task", "name", "status", "result / error"):
        table.add_column(col)
    for s in f["steps"]:
        detail = _short(s["error"]) if s["error"] and s["status"] != "completed" else _short(s["result"])
        table.add_row(str(s["step_index"]), str(s["task_id"]), s["name"], status(s["status"]), detail)
    j = f.get("join")
    if j is not None:
        table.add_row("join", str(j["id"]), j["name"], status(j["status"]), _short(j["result"] or j["error"]))
    c.print(table)
    if f.get("error"):
        c.print(Text(f"error: {f['error']}", style="red"))
    elif f["kind"] == "chain" and f["status"] == "completed":
        c.print(f"result: {_short(f['result'])}")


def task_table(page: dict[str, Any]) -> None:
    from rich import box

    shown = f", showing {len(page['items'])} from {page['offset']}" if page["has_more"] or page["offset"] else ""
    table = Table(title=f"{page['total']} task(s){shown}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("id", "name", "type", "status", "prio", "tag", "stage", "att", "next run", "progress", "error"):
        right = col in ("id", "prio", "stage", "att")
        wraps = col in ("progress", "error")  # shrunk first; their cells are cut to one line
        table.add_column(col, justify="right" if right else "left", no_wrap=not wraps, overflow="ellipsis")
    for t in page["items"]:
        table.add_row(
            str(t["id"]),
            t["name"],
            t["type"] + (f" {t['cron_expr']}" if t.get("cron_expr") else ""),
            status(t["status"]),
            str(t["priority"]),
            t.get("tag") or "",
            str(t["stage"]),
            str(t.get("attempt", "")),
            short_time(t["next_run_time"]) if t["status"] == "pending" else "",
            progress_cell(t) if t["status"] == "running" else "",
            Text(first_line(t.get("error")), style="red", no_wrap=True, overflow="ellipsis"),
        )
    console().print(table)


def first_line(text: str | None) -> str:
    """The first non-blank line of a text (an error's message without its traceback)."""
    return text.strip().splitlines()[0] if text and text.strip() else ""


def stats_table(items: list[dict[str, Any]]) -> None:
    label = items[0]["label"] if items and "label" in items[0] else None
    first = f"label {label}" if label else "tag"
    table = Table(title=f"tasks by {first}, name and status")
    for col in (first, "name", "status", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for r in items:
        group = r["value"] if label else r["tag"]
        table.add_row(Text(group or "-"), r["name"], status(r["status"]), str(r["count"]))
    console().print(table)


def workers_table(page: dict[str, Any]) -> None:
    table = Table(title=f"{page['total']} worker(s)")
    for col in (
        "worker",
        "pod",
        "status",
        "host",
        "pid",
        "started",
        "last heartbeat",
        "lease expires",
        "running",
        "handlers",
    ):
        table.add_column(col)
    for w in page["items"]:
        table.add_row(
            w["worker_id"],
            w.get("pod_id") or "-",
            status(w["status"]),
            w["host"],
            str(w["pid"]),
            local_time(w["registered_at"]),
            local_time(w["last_seen_at"]),
            local_time(w["expires_at"]),
            str(w["running_tasks"]),
            _short(", ".join(w.get("handlers") or []), 40),
        )
    console().print(table)


def handlers_table(items: list[dict[str, Any]]) -> None:
    """One row per handler and version, with the workers that serve it."""
    rows: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for h in items:
        rows.setdefault((h["name"], h["version"]), []).append(h)
    table = Table(title=f"{len(rows)} handler version(s) served by live workers")
    for col in ("handler", "version", "file", "options", "workers"):
        table.add_column(col, overflow="fold")
    for (name, version), hs in rows.items():
        opts = ", ".join(f"{k}={v}" for k, v in sorted(hs[0]["options"].items()) if k != "steps")
        table.add_row(
            name,
            version or "-",
            hs[0]["source"] or "(in code)",
            opts or "-",
            ", ".join(h["worker_id"] for h in hs),
        )
    console().print(table)
    if any((h["source"] or "").startswith("module:") for h in items):
        # handler modules are imported once per worker process: no hot reload for them
        line("module:… handlers are imported once: restart the workers to deploy a change")


def kv(doc: dict[str, Any]) -> None:
    for k, v in doc.items():
        line(f"{k}: {v}")


def checks(doc: dict[str, Any]) -> None:
    """`flowd doctor`: one line per check (PASS / WARN / FAIL / SKIP), its errors indented below."""
    c = console()
    mark = {"pass": ("PASS", "green"), "fail": ("FAIL", "bold red"), "skip": ("SKIP", "dim")}
    mark["warn"] = ("WARN", "yellow")
    for check in doc["checks"]:
        label, style = mark[check["status"]]
        # soft wrap: one check stays one line however narrow the terminal (grep-able)
        c.print(Text.assemble((f"{label} ", style), (f"{check['name']:<9}", "bold"), check["detail"]), soft_wrap=True)
        for err in check["errors"]:
            c.print(Text(f"       {err}", style="red"), soft_wrap=True)
    summary = "all checks passed" if doc["ok"] else "some checks failed"
    c.print(Text(summary, style="green" if doc["ok"] else "bold red"))


def _fig(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value:.1f}{unit}"


def bench_table(docs: list[dict[str, Any]]) -> None:
    """`flowd bench` / `make bench`: one row per run."""
    runs = max((int(d.get("runs", 1)) for d in docs), default=1)
    median = f"; median of {runs} runs" if runs > 1 else ""
    t = Table(title=f"flowd bench (tasks/s; latency submit→start, ms{median})")
    for col in ("backend", "tasks", "workers x conc", "history", "bulk enq/s", "single enq/s", "processed/s"):
        t.add_column(col, justify="right" if col != "backend" else "left")
    for col in ("p50", "p95", "p99", "worker RSS", "idle CPU"):
        t.add_column(col, justify="right")
    for d in docs:
        lat = d.get("latency_ms") or {}
        t.add_row(
            str(d["backend"]),
            f"{d['tasks']:,}",
            f"{d['workers']} x {d['concurrency']}",
            f"{d['history']:,}",
            _fig(d.get("enqueue_bulk_per_s")),
            _fig(d.get("enqueue_single_per_s")),
            _fig(d.get("process_per_s")),
            _fig(lat.get("p50")),
            _fig(lat.get("p95")),
            _fig(lat.get("p99")),
            _fig(d.get("worker_rss_mb"), " MB"),
            _fig(d.get("worker_idle_cpu_percent"), " %"),
        )
    # `make bench | tee` and CI logs: a pipe would squeeze the twelve columns to 80
    console(None if sys.stdout.isatty() else 160).print(t)
    fleet = Table(title="the fleet: claims per worker (bulk phase); CPU idle (% of a core) and per idle submit (ms)")
    cols = ("backend", "workers", "claims min", "median", "max", "fleet idle", "server idle", "submit: fleet", "server")
    for col in cols:
        fleet.add_column(col, justify="right" if col != "backend" else "left")
    for d in docs:
        claims = d.get("claims_per_worker") or {}
        cost = d.get("submit_cpu_ms") or {}
        fleet.add_row(
            str(d["backend"]),
            str(d["workers"]),
            _fig(claims.get("min")),
            _fig(claims.get("median")),
            _fig(claims.get("max")),
            _fig(d.get("fleet_idle_cpu_percent"), " %"),
            _fig(d.get("server_idle_cpu_percent"), " %"),
            _fig(cost.get("fleet"), " ms"),
            _fig(cost.get("server"), " ms"),
        )
    console(None if sys.stdout.isatty() else 160).print(fleet)
