"""structlog set-up: console lines on a terminal, JSON otherwise; task context via contextvars.

Handler code may log with `flowd.get_logger()` or the standard `logging` module: both go
through the same processors, so every line logged during an attempt carries the task id,
name, attempt and worker id bound by the runner.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(log_format: str | None = None, level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr with one renderer."""
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
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("sqlalchemy", "watchfiles", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; inside a handler its lines carry the task's context."""
    return structlog.stdlib.get_logger(name or "flowd")


def bind(**values: Any) -> Any:
    """Bind values to the current context (thread or asyncio task); returns reset tokens."""
    return structlog.contextvars.bind_contextvars(**values)


def unbind(tokens: Any) -> None:
    structlog.contextvars.reset_contextvars(**tokens)
