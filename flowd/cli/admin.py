"""Fleet and maintenance commands: worker, workers, handlers, retention, db."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from flowd.cli.common import ConfigOpt, DbOpt, JsonOpt, manager

db_app = typer.Typer(help="Schema management.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Create or migrate the schema (idempotent)."""
    from flowd.cli import render

    m = manager(db, config)
    with render.progress(f"migrating the schema of {m.db.display_url}"):
        url = m.db_upgrade()
    render.line(f"schema up to date at {url}")


@db_app.command("current")
def db_current(json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Show the database's schema revision and the one this flowd expects."""
    from flowd.cli import render

    doc = manager(db, config).db_current()
    if json_:
        render.emit_json(doc)
    else:
        state = "up to date" if doc["up_to_date"] else "needs `flowd db upgrade`"
        render.line(
            f"{doc['url']}: revision {doc['current'] or 'none (no flowd schema)'}, head {doc['head']} ({state})"
        )


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        pod_id: Annotated[
            str | None,
            typer.Option("--pod-id", help="stable node id: enables the registry and recovery", show_default=False),
        ] = None,
        worker_id: Annotated[str | None, typer.Option("--worker-id", show_default=False)] = None,
        handlers: Annotated[
            Path | None, typer.Option("--handlers", help="plugin directory", show_default=False)
        ] = None,
        concurrency: Annotated[
            int | None, typer.Option("--concurrency", help="attempts at once", show_default=False)
        ] = None,
        poll_interval: Annotated[float | None, typer.Option("--poll-interval", show_default=False)] = None,
        no_reload: Annotated[bool, typer.Option("--no-reload", help="do not watch the plugin directory")] = False,
        module: Annotated[
            list[str] | None,
            typer.Option(
                "--module", help="import handlers from this module, e.g. myapp.tasks (repeatable)", show_default=False
            ),
        ] = None,
        metrics_port: Annotated[
            int | None,
            typer.Option("--metrics-port", help="serve Prometheus /metrics and /healthz here", show_default=False),
        ] = None,
        metrics_host: Annotated[
            str | None,
            typer.Option("--metrics-host", help="address for --metrics-port [default: 127.0.0.1]", show_default=False),
        ] = None,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Run the worker daemon in the foreground until SIGTERM/SIGINT."""
        from flowd.logging import capture_output, configure

        m = manager(
            db,
            config,
            pod_id=pod_id,
            worker_id=worker_id,
            handlers_dir=handlers,
            max_concurrent_tasks=concurrency,
            poll_interval=poll_interval,
            reload=False if no_reload else None,
            handler_modules=module or None,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        configure(m.settings.log_format, m.settings.log_level)
        if capture_output():
            # JSON logs: what plugins and handlers print becomes log records, one JSON
            # object a line on stderr (stdout is captured too, so no redirect is needed)
            m.import_output = None
        m.run_worker()

    @app.command()
    def workers(
        status: Annotated[
            str | None, typer.Option("--status", help="active, superseded or dead", show_default=False)
        ] = None,
        limit: Annotated[int, typer.Option("--limit")] = 100,
        offset: Annotated[int, typer.Option("--offset")] = 0,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """The worker registry."""
        from flowd.cli import render
        from flowd.rules.shapes import page_json, worker_json

        doc = page_json(manager(db, config).workers(status, limit, offset), worker_json)
        render.emit_json(doc) if json_ else render.workers_table(doc)

    @app.command()
    def handlers(
        name: Annotated[str | None, typer.Option("--name", help="only this handler", show_default=False)] = None,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """The handlers live workers serve, across the fleet (name, options, version, worker)."""
        from flowd.cli import render
        from flowd.rules.shapes import handler_json

        items = [handler_json(h) for h in manager(db, config).fleet_handlers(name)]
        render.emit_json({"items": items, "total": len(items)}) if json_ else render.handlers_table(items)

    @app.command()
    def retention(
        expire_time: Annotated[
            float | None, typer.Option("--expire-time", help="seconds since last activity", show_default=False)
        ] = None,
        status: Annotated[list[str] | None, typer.Option("--status", show_default=False)] = None,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Delete expired terminal tasks with their events and attempts, now."""
        from flowd.cli import render

        m = manager(db, config)
        policy: dict[str, object] = {}
        if expire_time is not None:
            policy["expire_time"] = expire_time
        if status:
            policy["statuses"] = status
        with render.progress("retention: deleting expired tasks", quiet=json_) as update:
            doc = m.run_retention(policy, progress=update)
        render.emit_json(doc) if json_ else render.kv(doc)

    @app.command()
    def doctor(json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
        """Check settings, database, schema version, handlers and clock skew; exit 1 if any fails."""
        from flowd.cli import render
        from flowd.manager import doctor as run_checks

        with contextlib.redirect_stdout(sys.stderr):  # plugin import-time prints: not on stdout
            doc = run_checks(config, db_url=db)
        render.emit_json(doc) if json_ else render.checks(doc)
        if not doc["ok"]:
            raise typer.Exit(1)

    @app.command()
    def top(
        once: Annotated[bool, typer.Option("--once", help="draw one frame and exit")] = False,
        interval: Annotated[
            float, typer.Option("--interval", help="seconds between refreshes", min=0.1, max=3600)
        ] = 1.0,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Live dashboard: workers, queue, throughput, running tasks, failures (q quits)."""

        m = manager(db, config)
        if json_:
            from flowd.cli import render

            render.emit_json(m.dashboard())
            return
        from flowd.cli import render_top

        # not on a terminal (a pipe, a file, cron mail): one plain frame, never a redraw loop
        if once or not sys.stdout.isatty():
            render_top.print_once(m.dashboard(), m.db.display_url)
        else:
            render_top.live(m.dashboard, interval=interval, source=m.db.display_url)
