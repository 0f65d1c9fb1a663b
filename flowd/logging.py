"""structlog set-up: console lines on a terminal, JSON otherwise; task context via contextvars.

Handler code may log with `flowd.get_logger()` or the standard `logging` module: both go
through the same processors, so every line logged during an attempt carries the task id,
name, attempt and worker id bound by the runner.

structlog is imported when the first line is logged, not when a module that logs is
imported: `get_logger` hands out a stand-in that becomes the structlog logger at its first
use, and `configure(..., defer=True)` (the CLI's commands other than the worker) sets the
renderer up at the first record. A command that logs nothing never pays for the import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

from flowd.errors import describe, is_statement_error

_wanted: tuple[str | None, str] | None = None  # (format, level) of the last configure()
_applied = False
_lock = threading.RLock()
# the plugin file being imported in this thread (its import-time output is plugin_output)
_importing: ContextVar[str | None] = ContextVar("flowd_importing", default=None)


def configure(log_format: str | None = None, level: str = "info", *, defer: bool = False) -> None:
    """Route structlog and stdlib logging to stderr with one renderer; with `defer`, set
    structlog up at the first log record instead of now."""
    global _wanted, _applied
    with _lock:
        _wanted, _applied = (log_format, level), False
        root = logging.getLogger()
        root.setLevel(level.upper())
        for noisy in ("sqlalchemy", "watchfiles", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if defer:
            root.handlers[:] = [_FirstRecord()]
        else:
            _apply()


def _apply() -> None:
    """Set structlog and the root handler up as the last `configure` asked, once."""
    global _applied
    with _lock:
        if _applied or _wanted is None:
            return
        import structlog

        log_format, _level = _wanted
        shared: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ]
        fmt = _format(log_format)
        renderer: Any
        if fmt == "json":
            renderer = structlog.processors.JSONRenderer()
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        structlog.configure(
            processors=[
                # drop lines below the level first: a per-task debug line must cost nothing
                structlog.stdlib.filter_by_level,
                *shared,
                _hide_sql,
                structlog.processors.format_exc_info,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _hide_sql, renderer],
        )
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        logging.getLogger().handlers[:] = [handler]
        _applied = True


def _format(log_format: str | None) -> str:
    return log_format or ("console" if sys.stderr.isatty() else "json")


@contextlib.contextmanager
def importing(path: str) -> Iterator[None]:
    """Mark what this thread prints meanwhile as the import-time output of plugin `path`."""
    token = _importing.set(path)
    try:
        yield
    finally:
        _importing.reset(token)


class _OutputLog(io.TextIOBase):
    """A text stream that turns every line written to it into a log record.

    With JSON logs a worker's stderr carries only JSON objects: what a plugin prints at
    import becomes `plugin_output` (with its file), what a handler prints `handler_output`
    (with the task's id, name and attempt, bound by the runner), anything else `output`.
    Lines are gathered per context (thread, or asyncio task), so concurrent handlers never
    mix halves of their lines; the end of an attempt (`unbind`) flushes a last unfinished line.
    """

    encoding = "utf-8"

    def __init__(self, name: str, level: int, original: TextIO) -> None:
        self.name = name
        self.level = level
        self.original = original
        self._local = threading.local()
        self._pending: ContextVar[str] = ContextVar(f"flowd_pending_{name}", default="")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # code that writes to the descriptor itself (faulthandler) bypasses the log
        return self.original.fileno()

    def write(self, text: str) -> int:
        if getattr(self._local, "emitting", False):
            # the log's own failure report (logging.Handler.handleError): never loop
            return self.original.write(text)
        *lines, rest = (self._pending.get() + text).split("\n")
        self._pending.set(rest)
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        rest = self._pending.get()
        if rest:
            self._pending.set("")
            self._emit(rest)

    def _emit(self, line: str) -> None:
        import structlog

        plugin = _importing.get()
        extra: dict[str, Any] = {"stream": self.name, "text": line.rstrip("\r")}
        if plugin is not None:
            event = "plugin_output"
            extra["file"] = plugin
        elif "task_id" in structlog.contextvars.get_contextvars():
            event = "handler_output"
        else:
            event = "output"
        self._local.emitting = True
        try:
            get_logger("flowd.output").log(self.level, event, **extra)
        finally:
            self._local.emitting = False


def capture_output() -> bool:
    """With JSON logs, make sys.stdout and sys.stderr log every line they get as a record
    (stdout at info, stderr at warning); returns whether it did. The log handler keeps
    the real stderr. A worker calls it once, after `configure`."""
    with _lock:
        if _wanted is None or _format(_wanted[0]) != "json":
            return False
        _apply()
        if not isinstance(sys.stdout, _OutputLog):
            sys.stdout = _OutputLog("stdout", logging.INFO, sys.stdout)
        if not isinstance(sys.stderr, _OutputLog):
            sys.stderr = _OutputLog("stderr", logging.WARNING, sys.stderr)
        # multi-line reports become one record each, not one per line: warnings, and the
        # traceback of a thread that died (a hook's, a plugin import's)
        logging.captureWarnings(True)
        threading.excepthook = _log_thread_crash
        return True


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else None
    exc = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    get_logger("flowd").error("thread_crashed", thread=thread, exc_info=exc)


def _flush_output() -> None:
    """Log what the current context printed without a final newline (captured streams only)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _OutputLog):
            stream.flush()


def _hide_sql(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Below debug level, a logged database error shows its traceback and one clean line:
    the text SQLAlchemy gives it (the SQL and the bound parameters: payloads, secrets) is
    logged only when the level is debug."""
    exc = event.get("exc_info")
    if not exc or logging.getLogger().isEnabledFor(logging.DEBUG):
        return event
    if exc is True:
        exc = sys.exc_info()
    e = exc[1] if isinstance(exc, tuple) else exc
    if isinstance(e, BaseException) and is_statement_error(e):
        import traceback

        del event["exc_info"]
        event["exception"] = "Traceback (most recent call last):\n" + "".join(traceback.format_tb(e.__traceback__))
        event["exception"] += describe(e)
    return event


class _FirstRecord(logging.Handler):
    """The root handler of a deferred `configure`: sets structlog up at the first record,
    then hands that record to the real handler."""

    def emit(self, record: logging.LogRecord) -> None:
        _apply()
        for h in logging.getLogger().handlers:
            if h is not self:
                h.handle(record)


class _Logger:
    """A structlog logger made at its first use (see the module's docstring)."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            _apply()
            import structlog

            self._logger = structlog.stdlib.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; inside a handler its lines carry the task's context."""
    return _Logger(name or "flowd")


def bind(**values: Any) -> Any:
    """Bind values to the current context (thread or asyncio task); returns reset tokens."""
    import structlog

    return structlog.contextvars.bind_contextvars(**values)


def unbind(tokens: Any) -> None:
    """Reset what `bind` set; a handler's unfinished output line is logged first, with its task."""
    import structlog

    _flush_output()
    structlog.contextvars.reset_contextvars(**tokens)
