"""The `flowd` Typer application and its one error boundary."""

from __future__ import annotations

import os
import sys

import typer

from flowd.cli import admin, audit, tasks, web
from flowd.cli import bench as bench_cmd
from flowd.cli.audit import audit_app
from flowd.cli.flows import flow_app
from flowd.cli.flows import register as register_flows
from flowd.errors import BadInput, FlowdError, describe

app = typer.Typer(
    name="flowd",
    help="Durable tasks, cron and workflows on your database.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tasks.register(app)
admin.register(app)
audit.register(app)
bench_cmd.register(app)
web.register(app)
register_flows(app)
app.add_typer(audit_app, name="audit")
app.add_typer(admin.db_app, name="db")
app.add_typer(flow_app, name="flow")


def _version(value: bool) -> None:
    if value:
        from flowd import __version__

        sys.stdout.write(f"flowd {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """Durable tasks, cron and workflows on your database."""
    from flowd.logging import configure, get_logger

    # here rather than in main(): `flowd --help` never loads structlog. stdout is for
    # command output only (one JSON document with --json): logs go to stderr, and only
    # warnings for commands other than the worker (which reconfigures its level)
    configure(os.environ.get("FLOWD_LOG_FORMAT") or None, "warning", defer=True)
    if any(k.startswith("FLOWD_") for k in os.environ):
        from flowd.settings import unknown_env

        for message in unknown_env():
            get_logger("flowd.settings").warning("unknown_environment_variable", message=message)


def abort(message: str, code: int) -> None:
    """Print one line on stderr and exit with `code`."""
    sys.stderr.write(f"flowd: error: {message}\n")
    sys.exit(code)


def _check_argv(args: list[str]) -> None:
    """Refuse an argument that is not valid text (bytes the locale could not decode arrive as
    lone surrogates): no database, file or terminal could take it."""
    for i, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(f"argument {i} is not valid UTF-8 text: pass text in the UTF-8 encoding") from None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error is one line on stderr and an exit code."""
    command = typer.main.get_command(app)
    try:
        _check_argv(sys.argv[1:] if argv is None else argv)
        rv = command.main(args=argv, prog_name="flowd", standalone_mode=False)
    except FlowdError as e:
        if os.environ.get("FLOWD_DEBUG") == "1":
            raise
        abort(str(e).replace("\n", " "), e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        abort("aborted", 130)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        # typer bundles its own click: recognise its usage errors by shape, not by import
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError":
                sys.stdout.write(e.format_message() + "\n")
                sys.exit(0)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None and e.exit_code == 2 else ""
            abort(e.format_message().replace("\n", " ") + hint, int(e.exit_code))
        if os.environ.get("FLOWD_DEBUG") == "1":
            raise
        # one line, never SQL text or bound parameters (payloads may hold secrets)
        abort(f"{describe(e)} (set FLOWD_DEBUG=1 for a traceback)", 1)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


if __name__ == "__main__":
    main()
