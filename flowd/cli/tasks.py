"""Task commands: submit, cron, show, list, pause, resume, retry, cancel, delete, stats."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flowd.cli.common import ConfigOpt, DbOpt, JsonOpt, manager, parse_labels, parse_payload
from flowd.errors import BadInput

Payload = Annotated[str | None, typer.Argument(help="JSON object, '-' for stdin, or @file.json", show_default=False)]
Delay = Annotated[float | None, typer.Option("--delay", help="seconds before the first run", show_default=False)]
Priority = Annotated[int | None, typer.Option("--priority", help="higher runs first", show_default=False)]
Tag = Annotated[str | None, typer.Option("--tag", show_default=False)]
Timeout = Annotated[float | None, typer.Option("--timeout", help="attempt timeout, seconds", show_default=False)]
Retries = Annotated[
    int | None, typer.Option("--max-retries", help="total attempts, the first included", show_default=False)
]
Interval = Annotated[
    float | None, typer.Option("--retry-interval", help="seconds between attempts", show_default=False)
]
Backoff = Annotated[
    str | None,
    typer.Option("--retry-backoff", help="fixed or exponential (retry_interval doubling)", show_default=False),
]
MaxInterval = Annotated[
    float | None,
    typer.Option("--retry-max-interval", help="cap of an exponential wait, seconds", show_default=False),
]
Jitter = Annotated[
    bool | None,
    typer.Option("--retry-jitter/--no-retry-jitter", help="draw each wait from [w/2, w]", show_default=False),
]
Labels = Annotated[list[str] | None, typer.Option("--label", help="K=V (repeatable)", show_default=False)]
Key = Annotated[
    str | None, typer.Option("--key", help="idempotency key: reuse the active task with this key", show_default=False)
]
Reason = Annotated[str | None, typer.Option("--reason", show_default=False)]
AllowUnknown = Annotated[
    bool,
    typer.Option("--allow-unknown", help="queue a name no live worker serves and no local handler file declares"),
]


def _options(
    delay: float | None,
    priority: int | None,
    tag: str | None,
    timeout: float | None,
    max_retries: int | None,
    retry_interval: float | None,
    label: list[str] | None,
    key: str | None,
) -> dict[str, Any]:
    opts = {
        "delay": delay,
        "priority": priority,
        "tag": tag,
        "timeout": timeout,
        "max_retries": max_retries,
        "retry_interval": retry_interval,
        "labels": parse_labels(label),
        "key": key,
    }
    return {k: v for k, v in opts.items() if v is not None and v != {}}


def _backoff(backoff: str | None, max_interval: float | None, jitter: bool | None) -> dict[str, Any]:
    opts = {"retry_backoff": backoff, "retry_max_interval": max_interval, "retry_jitter": jitter}
    return {k: v for k, v in opts.items() if v is not None}


def _wait_for(m: Any, tid: int, timeout: float | None, json_: bool) -> None:
    """`--wait`: print the result (or the task with --json) once it completed; exit 1 otherwise."""
    from flowd.cli import render
    from flowd.errors import FlowdError
    from flowd.model import TaskStatus
    from flowd.rules.shapes import task_json

    try:
        t = m.wait(tid, timeout)
    except TimeoutError:
        status = m.get_task(tid).status.value
        raise FlowdError(f"task {tid} is still {status} after {timeout:g}s (--wait-timeout)") from None
    if json_:
        render.emit_json(task_json(t))
    if t.status is TaskStatus.PERMANENTLY_FAILED:
        raise FlowdError(f"task {tid} failed: {t.error}")
    if not json_:
        render.emit_json(t.result)


def _created(m: Any, tid: int, json_: bool) -> None:
    """Print a new task: its id alone on a line, or the task document with --json."""
    from flowd.cli import render
    from flowd.rules.shapes import task_json

    render.emit_json(task_json(m.get_task(tid))) if json_ else render.line(str(tid))


def register(app: typer.Typer) -> None:
    @app.command()
    def submit(
        name: str,
        payload: Payload = None,
        delay: Delay = None,
        priority: Priority = None,
        tag: Tag = None,
        timeout: Timeout = None,
        max_retries: Retries = None,
        retry_interval: Interval = None,
        label: Labels = None,
        key: Key = None,
        debounce: Annotated[
            float | None,
            typer.Option("--debounce", help="seconds: with --key, one run after a burst of submissions"),
        ] = None,
        entity: Annotated[
            str | None, typer.Option("--entity", help="TYPE:ID the task is about (see flowd entity)")
        ] = None,
        allow_unknown: AllowUnknown = False,
        retry_backoff: Backoff = None,
        retry_max_interval: MaxInterval = None,
        retry_jitter: Jitter = None,
        wait: Annotated[
            bool, typer.Option("--wait", help="wait for the task to end; print its result (the task with --json)")
        ] = False,
        wait_timeout: Annotated[
            float | None,
            typer.Option("--wait-timeout", help="with --wait: give up after S seconds (exit 1)", show_default=False),
        ] = None,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Enqueue an async task; prints its id (with --wait: its result once it ended)."""

        if wait_timeout is not None and not wait:
            raise BadInput("--wait-timeout needs --wait")
        if wait_timeout is not None and not 0 <= wait_timeout < float("inf"):
            raise BadInput(f"--wait-timeout must be >= 0 seconds, not {wait_timeout:g}")
        body = parse_payload(payload)
        m = manager(db, config)
        opts = _options(delay, priority, tag, timeout, max_retries, retry_interval, label, key)
        opts.update(_backoff(retry_backoff, retry_max_interval, retry_jitter))
        if debounce is not None:
            opts["debounce"] = debounce
        if entity is not None:
            opts["entity"] = entity
        tid = m.submit(name, body, allow_unknown=allow_unknown, **opts)
        if wait:
            _wait_for(m, tid, wait_timeout, json_)
        else:
            _created(m, tid, json_)

    @app.command()
    def cron(
        name: str,
        expr: Annotated[str, typer.Argument(help="5 fields, or 6 with seconds first")],
        payload: Payload = None,
        priority: Priority = None,
        tag: Tag = None,
        timeout: Timeout = None,
        max_retries: Retries = None,
        retry_interval: Interval = None,
        label: Labels = None,
        key: Key = None,
        tz: Annotated[str | None, typer.Option("--tz", help="IANA zone of the schedule", show_default=False)] = None,
        delay: Delay = None,
        allow_unknown: AllowUnknown = False,
        retry_backoff: Backoff = None,
        retry_max_interval: MaxInterval = None,
        retry_jitter: Jitter = None,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Schedule a recurring task; prints its id."""

        body = parse_payload(payload)
        m = manager(db, config)
        opts = _options(delay, priority, tag, timeout, max_retries, retry_interval, label, key)
        opts.update(_backoff(retry_backoff, retry_max_interval, retry_jitter))
        tid = m.cron(name, expr, body, tz=tz, allow_unknown=allow_unknown, **opts)
        _created(m, tid, json_)

    @app.command()
    def show(task_id: int, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
        """Show one task."""
        from flowd.cli import render
        from flowd.rules.shapes import task_json

        m = manager(db, config)
        t = task_json(m.get_task(task_id))
        render.emit_json(t) if json_ else render.task_detail(t, m.handler_steps(t["name"]))

    @app.command("list")
    def list_(
        status: Annotated[list[str] | None, typer.Option("--status", show_default=False)] = None,
        name: Annotated[str | None, typer.Option("--name", show_default=False)] = None,
        type_: Annotated[str | None, typer.Option("--type", help="async or cron", show_default=False)] = None,
        tag: Tag = None,
        label: Labels = None,
        parent: Annotated[int | None, typer.Option("--parent", show_default=False)] = None,
        root: Annotated[int | None, typer.Option("--root", show_default=False)] = None,
        worker: Annotated[str | None, typer.Option("--worker", show_default=False)] = None,
        limit: Annotated[int, typer.Option("--limit")] = 100,
        offset: Annotated[int, typer.Option("--offset")] = 0,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """List tasks, newest first."""
        from flowd.cli import render
        from flowd.rules.shapes import page_json, task_json

        page = manager(db, config).query_tasks(
            limit=limit,
            offset=offset,
            status=status,
            name=name,
            type=type_,
            tag=tag,
            labels=parse_labels(label),
            parent_id=parent,
            root_id=root,
            worker_id=worker,
        )
        doc = page_json(page, task_json)
        render.emit_json(doc) if json_ else render.task_table(doc)

    def _control(verb: str, task_id: int, reason: str | None, json_: bool, db: str | None, config: str | None) -> None:
        from flowd.cli import render
        from flowd.rules.shapes import task_json

        m = manager(db, config)
        t = getattr(m, f"{verb}_task")(task_id, reason)
        if json_:
            render.emit_json(task_json(t))
        else:
            render.line(f"task {t.id} {t.status.value}")

    @app.command()
    def pause(
        task_id: int, reason: Reason = None, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None
    ) -> None:
        """Pause a pending or running task."""
        _control("pause", task_id, reason, json_, db, config)

    @app.command()
    def resume(
        task_id: int, reason: Reason = None, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None
    ) -> None:
        """Resume a paused, suspended, failed, timeout or permanently_failed task."""
        _control("resume", task_id, reason, json_, db, config)

    @app.command()
    def retry(
        task_id: int, reason: Reason = None, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None
    ) -> None:
        """Retry a failed, timeout or permanently_failed task now, with a fresh retry budget."""
        _control("retry", task_id, reason, json_, db, config)

    @app.command()
    def cancel(
        task_id: int, reason: Reason = None, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None
    ) -> None:
        """Cancel a task: it ends permanently_failed with the reason as its error."""
        _control("cancel", task_id, reason, json_, db, config)

    @app.command()
    def delete(
        status: Annotated[list[str] | None, typer.Option("--status", show_default=False)] = None,
        name: Annotated[str | None, typer.Option("--name", show_default=False)] = None,
        type_: Annotated[str | None, typer.Option("--type", show_default=False)] = None,
        tag: Tag = None,
        label: Labels = None,
        parent: Annotated[int | None, typer.Option("--parent", show_default=False)] = None,
        root: Annotated[int | None, typer.Option("--root", show_default=False)] = None,
        all_: Annotated[bool, typer.Option("--all", help="delete every task")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="confirm the deletion")] = False,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Delete matching tasks with their events and attempts."""
        from flowd.cli import render

        if not yes:
            raise BadInput("delete removes tasks and their audit trail: add --yes to confirm")
        with render.progress("deleting tasks", quiet=json_) as update:
            n = manager(db, config).delete_tasks(
                progress=update,
                status=status,
                name=name,
                type=type_,
                tag=tag,
                labels=parse_labels(label),
                parent_id=parent,
                root_id=root,
                all=all_,
            )
        render.emit_json({"deleted": n}) if json_ else render.line(str(n))

    @app.command()
    def stats(
        tag: Tag = None,
        by_label: Annotated[
            str | None, typer.Option("--by-label", help="count by this label's value instead of by tag")
        ] = None,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Task counts by tag (or by a label's value), name and status."""
        from flowd.cli import render

        items = manager(db, config).stats(tag, by_label)
        render.emit_json({"items": items}) if json_ else render.stats_table(items)
