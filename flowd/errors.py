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
