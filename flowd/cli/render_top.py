"""`flowd top`: the live dashboard (rich Live) and its plain-text frame for pipes and `--once`.

The second of the two modules that import rich (with render.py). It draws what
`TaskManager.dashboard()` returns and knows nothing else of flowd.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from flowd.cli.render import STATUS_STYLE, status

SPARK = " ▁▂▃▄▅▆▇█"
# Queue columns in lifecycle order; any other status found is appended after these.
STATUS_ORDER = ("pending", "running", "suspended", "failed", "timeout", "paused", "completed", "permanently_failed")


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return SPARK[1] * len(values)
    return "".join(SPARK[max(1, round(v / top * (len(SPARK) - 1)))] if v else SPARK[1] for v in values)


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    v = max(0.0, v)
    if v < 60:
        return f"{v:.1f}s"
    if v < 3600:
        return f"{int(v // 60)}m{int(v % 60):02d}s"
    return f"{int(v // 3600)}h{int(v % 3600 // 60):02d}m"


def _progress(pct: float | None, plain: bool) -> RenderableType:
    if pct is None:
        return Text("-")
    pct = min(100.0, max(0.0, pct))
    if plain:
        filled = round(pct / 10)
        return Text(f"[{'#' * filled}{'.' * (10 - filled)}] {pct:.0f}%")
    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=100, completed=pct, width=20), Text(f"{pct:3.0f}%"))
    return cell


def _table(title: str, columns: list[str], plain: bool) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE if plain else box.ROUNDED, expand=False)
    for c in columns:
        t.add_column(c, justify="right" if c in ("count", "running", "pid", "att", "id") else "left")
    return t


def frame(doc: dict[str, Any], *, plain: bool = False, source: str = "") -> RenderableType:
    """One screen of the dashboard."""
    parts: list[RenderableType] = [
        Text.assemble(
            ("flowd top", "bold"),
            f"  {source}  " if source else "  ",
            (doc["generated_at"] or "", "dim"),
            ("" if plain else "   q quits", "dim"),
        )
    ]

    workers = _table(
        f"workers ({len(doc['workers'])} active)",
        ["worker", "pod", "host", "pid", "running", "last seen", "lease left"],
        plain,
    )
    for w in doc["workers"]:
        left = w["lease_left_seconds"]
        workers.add_row(
            w["worker_id"],
            w["pod_id"] or "-",
            w["host"],
            str(w["pid"]),
            str(w["running_tasks"]),
            _secs(w["last_seen_seconds"]) + " ago",
            Text(_secs(left), style="red" if left is not None and left <= 0 else ""),
        )
    parts.append(workers)

    present = {q["status"] for q in doc["queue"]}
    statuses = [s for s in STATUS_ORDER if s in present] + sorted(present - set(STATUS_ORDER))
    queue = _table("queue by name and status", ["name", *statuses], plain)
    for col in queue.columns[1:]:
        col.justify = "right"
    counts: dict[str, dict[str, int]] = {}
    for q in doc["queue"]:
        counts.setdefault(q["name"], {})[q["status"]] = q["count"]
    for name in sorted(counts):
        queue.add_row(name, *(Text(str(counts[name].get(s, "")), style=STATUS_STYLE.get(s, "")) for s in statuses))
    parts.append(queue)

    tp = doc["throughput"]
    parts.append(
        Text.assemble(
            (f"throughput (last {tp['window_seconds']:g}s, {tp['bucket_seconds']:g}s buckets)  ", "bold"),
            (sparkline(tp["ended"]), "green"),
            f"  {tp['total']} attempts ended, {tp['per_second']:g}/s, ",
            (f"{sum(tp['failed'])} failed", "red" if sum(tp["failed"]) else ""),
        )
    )

    running = _table(
        f"running ({len(doc['running'])})", ["id", "name", "worker", "att", "stage", "progress", "elapsed"], plain
    )
    for r in doc["running"]:
        stage = f"{r['stage']} {r['stage_name']}" if r["stage_name"] else str(r["stage"])
        if r["progress_text"]:
            stage += f": {r['progress_text']}"
        running.add_row(
            str(r["id"]),
            r["name"],
            r["worker_id"] or "-",
            str(r["attempt"]),
            stage[:40],
            _progress(r["progress_percent"], plain),
            _secs(r["elapsed_seconds"]),
        )
    parts.append(running)

    failures = _table("recent failures", ["at", "id", "name", "att", "event", "error"], plain)
    for f in doc["failures"]:
        error = (f["error"] or "").strip().splitlines()
        failures.add_row(
            (f["at"] or "")[11:23],
            str(f["task_id"]),
            f["name"] or "(deleted)",
            str(f["attempt"] or ""),
            status("timeout" if f["event_type"] == "task_timed_out" else "failed"),
            (error[0] if error else "")[:70],
        )
    parts.append(failures)
    return Group(*parts)


def print_once(doc: dict[str, Any], source: str = "") -> None:
    """One frame: coloured on a terminal, a plain table otherwise."""
    plain = not sys.stdout.isatty()
    width = None if not plain else int(os.environ.get("COLUMNS", "160"))
    Console(highlight=False, width=width).print(frame(doc, plain=plain, source=source))


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A reader of single key presses (stdin in cbreak mode) that waits at most a timeout."""
    if not sys.stdin.isatty():

        def wait(timeout: float) -> str:
            select.select([], [], [], timeout)
            return ""

        yield wait
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 32).decode(errors="replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def live(fetch: Callable[[], dict[str, Any]], *, interval: float = 1.0, source: str = "") -> None:
    """Redraw every `interval` seconds until q, Q or Ctrl-C."""
    console = Console(highlight=False)
    try:
        with (
            _keys() as key,
            Live(frame(fetch(), source=source), console=console, screen=True, auto_refresh=False) as view,
        ):
            while True:
                if any(c in "qQ" for c in key(interval)):
                    return
                view.update(frame(fetch(), source=source), refresh=True)
    except KeyboardInterrupt:
        return
