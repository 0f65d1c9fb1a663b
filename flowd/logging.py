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

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

from flowd.errors import describe, is_statement_error

_wanted: tuple[str | None, str] | None = None  # (format, level) of the last configure()
_applied = False
_lock = threading.RLock()


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
        fmt = log_format or ("console" if sys.stderr.isatty() else "json")
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
    import structlog

    structlog.contextvars.reset_contextvars(**tokens)
