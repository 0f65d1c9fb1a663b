"""flowd: durable tasks, cron and workflows whose queue, registry and audit log is a database.

Plugins import `handler`, `on`, `constraint` and `SubTasks` from here; those are cheap. `TaskManager` and
`Task` load the engine lazily so `from flowd import handler` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowd.errors import TaskFailed
from flowd.model import SubTasks
from flowd.plugins import handler, on
from flowd.rules.constraints import constraint

__version__ = "0.1.0"
__all__ = [
    "SubTasks",
    "Task",
    "TaskFailed",
    "TaskManager",
    "__version__",
    "connect",
    "constraint",
    "get_logger",
    "handler",
    "on",
]

if TYPE_CHECKING:
    from flowd.engine.task import Task
    from flowd.manager import TaskManager, connect


def get_logger(name: str | None = None) -> Any:
    """A structlog logger whose lines carry the running task's id, name, attempt and worker."""
    from flowd.logging import get_logger as _get

    return _get(name)


def __getattr__(name: str) -> Any:
    if name == "TaskManager":
        from flowd.manager import TaskManager

        return TaskManager
    if name == "connect":
        from flowd.manager import connect

        return connect
    if name == "Task":
        from flowd.engine.task import Task

        return Task
    raise AttributeError(name)
