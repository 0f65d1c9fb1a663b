"""`flowd audit task|workflow|summary`: the execution audit."""

from __future__ import annotations

from typing import Annotated

import typer

from flowd.cli.common import ConfigOpt, DbOpt, JsonOpt, manager, parse_time
from flowd.errors import BadInput
from flowd.limits import MAX_SECONDS

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
    limit: Annotated[int, typer.Option("--limit")] = 1000,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    order: Annotated[str, typer.Option("--order", help="asc or desc")] = "asc",
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A task's snapshot, its attempts and its events."""
    from flowd.cli import render, render_audit

    doc = manager(db, config).task_audit(
        task_id,
        event_types=event_type,
        attempt=attempt,
        stage=stage,
        worker_id=worker,
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        limit=limit,
        offset=offset,
        order=order,
    )
    render.emit_json(doc) if json_ else render_audit.audit_task(doc)


@audit_app.command("workflow")
def audit_workflow(
    task_id: int,
    limit: Annotated[int, typer.Option("--limit")] = 10000,
    offset: Annotated[int, typer.Option("--offset")] = 0,
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A whole workflow: every task and event under the root, as a tree for people."""
    from flowd.cli import render, render_audit

    m = manager(db, config)
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
