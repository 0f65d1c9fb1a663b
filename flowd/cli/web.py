"""`flowd web`: the dashboard and HTTP API in the foreground."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flowd.cli.common import ConfigOpt, DbOpt, manager


def register(app: typer.Typer) -> None:
    @app.command()
    def web(
        host: Annotated[
            str | None, typer.Option("--host", help="address to listen on [default: 127.0.0.1]", show_default=False)
        ] = None,
        port: Annotated[int | None, typer.Option("--port", help="[default: 8765]", show_default=False)] = None,
        token: Annotated[
            str | None,
            typer.Option("--token", help="needed for actions (and reads off loopback); or FLOWD_WEB_TOKEN"),
        ] = None,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Serve the live web dashboard and HTTP API until Ctrl-C / SIGTERM."""
        from flowd.logging import configure
        from flowd.web.serve import check_bind, serve

        m = manager(db, config, web_host=host, web_port=port, web_token=token)
        s = m.settings
        check_bind(s.web_host, s.web_token)  # before anything is opened
        configure(s.log_format, s.log_level)
        actions = "actions need the token" if s.web_token else "read-only: no token, actions disabled"

        def announce(url: str) -> None:
            sys.stderr.write(f"flowd web: {url} on {m.db.display_url} ({actions})\n")
            sys.stderr.flush()

        serve(m, s.web_host, s.web_port, s.web_token, announce=announce)
