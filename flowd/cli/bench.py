"""`flowd bench`: throughput, latency and memory figures from real worker processes."""

from __future__ import annotations

from typing import Annotated

import typer

from flowd.cli.common import JsonOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        db: Annotated[
            str | None,
            typer.Option("--db", help="server URL to create a scratch database on [default: a temporary SQLite file]"),
        ] = None,
        listen_db: Annotated[
            str | None,
            typer.Option(
                "--listen-db", help="a direct server URL for the workers' LISTEN when --db goes through a pooler"
            ),
        ] = None,
        tasks: Annotated[int, typer.Option("--tasks", help="tasks to enqueue in bulk and process")] = 10_000,
        workers: Annotated[int, typer.Option("--workers", help="`flowd worker` processes")] = 1,
        concurrency: Annotated[int, typer.Option("--concurrency", help="attempts at once per worker")] = 10,
        payload_bytes: Annotated[int, typer.Option("--payload-bytes", help="size of each task's payload")] = 0,
        handler: Annotated[str, typer.Option("--handler", help="noop, sleep:MS or cpu:MS")] = "noop",
        history: Annotated[int, typer.Option("--history", help="completed tasks already in the tables")] = 0,
        skip: Annotated[
            str | None, typer.Option("--skip", help="comma list of phases to skip: latency, single", show_default=False)
        ] = None,
        runs: Annotated[
            int | None,
            typer.Option("--runs", help="runs on fresh databases; figures are medians [default: 1; 3 with --standard]"),
        ] = None,
        standard: Annotated[
            bool, typer.Option("--standard", help="the `make bench` set: SQLite, plus servers whose test URLs are set")
        ] = False,
        json_: JsonOpt = False,
    ) -> None:
        """Benchmark enqueue, processing and submit→start latency on a fresh database."""
        import os

        from flowd.bench.run import BenchConfig, parse_skip, run_median, standard_set
        from flowd.cli import render
        from flowd.urls import mask_url

        if standard:
            docs = []
            for cfg in standard_set(dict(os.environ)):
                with render.phases(mask_url(cfg.db_url or "sqlite"), quiet=json_) as update:
                    docs.append(run_median(cfg, 3 if runs is None else runs, update))
            render.emit_json(docs) if json_ else render.bench_table(docs)
            return
        cfg = BenchConfig(
            db_url=db,
            listen_db=listen_db,
            tasks=tasks,
            workers=workers,
            concurrency=concurrency,
            payload_bytes=payload_bytes,
            handler=handler,
            history=history,
            skip=parse_skip(skip),
        )
        with render.phases(quiet=json_) as update:
            doc = run_median(cfg, 1 if runs is None else runs, update)
        render.emit_json(doc) if json_ else render.bench_table([doc])
