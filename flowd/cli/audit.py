"""`flowd audit task|workflow|summary`: the execution audit."""

from __future__ import annotations

from typing import Annotated

import typer

from flowd.cli.common import ConfigOpt, DbOpt, JsonOpt, manager, parse_time
from flowd.errors import BadInput
from flowd.limits import MAX_SECONDS

OutcomeOpt = Annotated[
    str | None,
    typer.Option(
        "--outcome", help="attempts that ended so: completed, failed, timeout, suspended, ...", show_default=False
    ),
]
OpenOpt = Annotated[bool, typer.Option("--open-only", "--open", help="only attempts still running")]

audit_app = typer.Typer(help="Read the audit trail of a task or a workflow.", no_args_is_help=True)


@audit_app.command("task")
def audit_task(
    task_id: int,
    event_type: Annotated[list[str] | None, typer.Option("--event-type", show_default=False)] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="events and attempts of this attempt", show_default=False)
    ] = None,
    stage: Annotated[int | None, typer.Option("--stage", help="events of this stage", show_default=False)] = None,
    worker: Annotated[str | None, typer.Option("--worker", show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time", show_default=False)] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time", show_default=False)] = None,
    outcome: OutcomeOpt = None,
    open_only: OpenOpt = False,
    started_after: Annotated[str | None, typer.Option("--started-after", help="ISO time", show_default=False)] = None,
    started_before: Annotated[str | None, typer.Option("--started-before", help="ISO time", show_default=False)] = None,
    ended_after: Annotated[str | None, typer.Option("--ended-after", help="ISO time", show_default=False)] = None,
    ended_before: Annotated[str | None, typer.Option("--ended-before", help="ISO time", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit")] = 1000,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    order: Annotated[str, typer.Option("--order", help="asc or desc")] = "asc",
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A task's snapshot, its attempts and its events.

    --outcome, --open-only and the --started-*/--ended-* ranges narrow the attempts.
    """
    from flowd.cli import render, render_audit

    doc = manager(db, config).task_audit(
        task_id,
        event_types=event_type,
        attempt=attempt,
        stage=stage,
        worker_id=worker,
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        outcome=outcome,
        open_only=open_only,
        started_after=parse_time(started_after, "--started-after"),
        started_before=parse_time(started_before, "--started-before"),
        ended_after=parse_time(ended_after, "--ended-after"),
        ended_before=parse_time(ended_before, "--ended-before"),
        limit=limit,
        offset=offset,
        order=order,
    )
    render.emit_json(doc) if json_ else render_audit.audit_task(doc)


@audit_app.command("workflow")
def audit_workflow(
    task_id: int,
    attempts: Annotated[
        bool, typer.Option("--attempts", help="a page of the workflow's attempts (filters: --outcome --worker --open)")
    ] = False,
    events: Annotated[
        bool, typer.Option("--events", help="a page of the workflow's events (--type --worker --since --until)")
    ] = False,
    outcome: OutcomeOpt = None,
    open_only: OpenOpt = False,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", "--event-type", help="event type (repeatable)", show_default=False)
    ] = None,
    worker: Annotated[str | None, typer.Option("--worker", show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time", show_default=False)] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time", show_default=False)] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="page size (10000 for the tree, else 100)", show_default=False)
    ] = None,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    order: Annotated[str | None, typer.Option("--order", help="asc (default) or desc", show_default=False)] = None,
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A whole workflow: every task and event under the root, as a tree for people.

    With --attempts or --events: one page of the attempts or events of every task of the
    workflow, filtered.
    """
    from flowd.cli import render, render_audit

    if attempts and events:
        raise BadInput("--attempts and --events are two views: choose one")
    attempt_filters = {"--outcome": outcome, "--open": open_only or None}
    event_filters = {"--type": event_type, "--since": since, "--until": until}
    for flags, needs in ((attempt_filters, attempts), (event_filters, events)):
        given = [f for f, v in flags.items() if v]
        if given and not needs:
            raise BadInput(f"{given[0]} filters {'--attempts' if flags is attempt_filters else '--events'}: add it")
    if worker and not (attempts or events):
        raise BadInput("--worker filters --attempts or --events: add one")
    if order is not None and not (attempts or events):
        raise BadInput("--order applies to --attempts or --events: add one")
    m = manager(db, config)
    if attempts or events:
        page = (100 if limit is None else limit, offset, order or "asc")
        if attempts:
            af = m.attempt_filter(outcome=outcome, worker_id=worker, open_only=open_only)
            doc = m.workflow_attempts_audit(task_id, af, *page)
        else:
            since_t, until_t = parse_time(since, "--since"), parse_time(until, "--until")
            ef = m.event_filter(event_type, worker_id=worker, since=since_t, until=until_t)
            doc = m.workflow_events_audit(task_id, ef, *page)
        render.emit_json(doc) if json_ else render_audit.workflow_page(doc)
        return
    limit = 10000 if limit is None else limit
    m.check_page(limit, offset)  # the tree shows every task; the page applies to --json
    if json_:
        render.emit_json(m.workflow_audit(task_id, limit, offset))
    else:
        render_audit.workflow_tree(*m.workflow_tree(task_id))


@audit_app.command("summary")
def audit_summary(task_id: int, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Counts, timing, failed tasks, slowest attempts and the critical path of a workflow."""
    from flowd.cli import render, render_audit

    doc = manager(db, config).workflow_summary(task_id)
    render.emit_json(doc) if json_ else render_audit.summary(doc)


def register(app: typer.Typer) -> None:
    @app.command()
    def events(
        follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until Ctrl-C")] = False,
        task: Annotated[int | None, typer.Option("--task", help="one task", show_default=False)] = None,
        workflow: Annotated[
            int | None, typer.Option("--workflow", help="a workflow by its root", show_default=False)
        ] = None,
        name: Annotated[str | None, typer.Option("--name", help="tasks of this name", show_default=False)] = None,
        limit: Annotated[int, typer.Option("--limit", help="how many recent events first")] = 50,
        interval: Annotated[float, typer.Option("--interval", help="seconds between polls")] = 0.5,
        json_: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Print the audit log (recent events); with --follow, tail it live like `tail -f`."""
        import time

        from flowd.cli import render, render_audit
        from flowd.rules.shapes import event_json

        if not 0 < interval <= MAX_SECONDS:
            raise BadInput(f"--interval must be positive seconds, at most {MAX_SECONDS:.0f}, not {interval:g}")
        m = manager(db, config)
        batch = m.events(limit=limit, task_id=task, root_id=workflow, name=name)
        last = 0
        try:
            while True:
                for e in batch:
                    doc = event_json(e)
                    render.emit_json(doc) if json_ else render_audit.event_line(doc)
                    last = max(last, e.id)
                if not follow:
                    return
                time.sleep(interval)
                batch = m.events(after_id=last, limit=1000, task_id=task, root_id=workflow, name=name)
        except KeyboardInterrupt:
            return
