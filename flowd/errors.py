"""One exception root for everything flowd refuses, with the CLI exit code it maps to."""

from __future__ import annotations


class FlowdError(Exception):
    """Base of every error flowd raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1


class BadInput(FlowdError):
    """The caller gave something malformed (bad JSON, bad cron, unknown name): exit 2."""

    exit_code = 2


class NotFound(FlowdError):
    """A task (or worker) with that id does not exist."""


class TransitionRefused(FlowdError):
    """The task is not in a status from which the requested change is allowed."""


class DatabaseUnavailable(FlowdError):
    """The database could not be reached or opened."""


class SchemaMismatch(FlowdError):
    """The database's schema is at another revision than this flowd's: older (run `flowd db
    upgrade`) or newer (a newer flowd migrated it). Exit 2: nothing was read or written."""

    exit_code = 2


class TransactionConflict(DatabaseUnavailable):
    """A deadlock or serialization failure that persisted through the store's retries."""


class HandlerError(FlowdError):
    """A handler misused the task API (bad checkpoint code, bad progress, bad SubTasks)."""


class TaskTimeout(FlowdError):
    """Raised by `task.check_timeout()` once the attempt's deadline has passed."""


class StaleWrite(FlowdError):
    """A fenced write matched no row: the attempt no longer belongs to this worker."""


def is_statement_error(e: BaseException) -> bool:
    """A database driver error wrapped with its statement (SQLAlchemy's `StatementError`):
    its text carries the SQL and the bound parameters, which may hold payloads and secrets."""
    return hasattr(e, "statement") and hasattr(e, "params") and hasattr(e, "orig")


def describe(e: BaseException) -> str:
    """One line about `e` that is safe to show or store: never SQL text or bound parameters.

    The full text of a database error is left to the debug log (FLOWD_DEBUG=1).
    """
    if is_statement_error(e):
        orig = getattr(e, "orig", None)
        if hasattr(e, "connection_invalidated"):  # raised by the driver: its text may quote values
            args = getattr(orig, "args", ())
            code = getattr(orig, "sqlstate", None) or (args[0] if args and isinstance(args[0], int) else None)
            where = f" ({type(orig).__name__} {code})" if code else f" ({type(orig).__name__})"
            return f"the database refused a statement: {type(e).__name__}{where}"
        if orig is not None:  # raised by flowd or SQLAlchemy while binding a value
            e = orig
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class TaskFailed(FlowdError):
    """`TaskManager.result()`: the task ended `permanently_failed`; `.error` says why."""

    def __init__(self, task_id: int, error: str | None) -> None:
        super().__init__(f"task {task_id} failed: {error}" if error else f"task {task_id} failed")
        self.task_id = task_id
        self.error = error

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[int, str | None]]:
        return (TaskFailed, (self.task_id, self.error))
