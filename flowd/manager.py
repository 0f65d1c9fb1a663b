"""TaskManager: the public façade over the store, the engine and the audit views.

The CLI is a thin layer over this class; so is a Python program that embeds flowd.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from flowd.audit import retention as retention_mod
from flowd.audit import views
from flowd.clock import after, iso, utcnow
from flowd.engine import flows, ops
from flowd.errors import BadInput, DatabaseUnavailable, FlowdError, NotFound, TaskFailed
from flowd.limits import MAX_ID, MAX_SECONDS, PRIORITY_MAX
from flowd.logging import get_logger
from flowd.model import EventType, HandlerRecord, NewTask, Page, TaskId, TaskRecord, TaskStatus, TaskType
from flowd.plugins import (
    HandlerSpec,
    PluginError,
    PluginLoader,
    Registry,
    load_modules,
    make_spec,
    merge,
)
from flowd.registry import catalog
from flowd.rules import constraints as cons
from flowd.rules import cron as cron_rules
from flowd.rules import flows as flow_rules
from flowd.rules import options as opt
from flowd.rules.shapes import flow_json
from flowd.settings import Settings, load_settings, task_defaults, unknown_env
from flowd.store import constraints as constraint_store
from flowd.store import entities as entity_store
from flowd.store import events as event_store
from flowd.store import tasks as task_store
from flowd.store import workers as worker_store
from flowd.store.attempts import AttemptFilter
from flowd.store.db import Database
from flowd.store.events import EventFilter
from flowd.store.tasks import TaskFilter

if TYPE_CHECKING:
    # the worker (threads, asyncio, sockets) loads only when a worker runs: `flowd submit` stays quick
    from flowd.engine.waiting import Waiters
    from flowd.engine.worker import Worker

# progress(done, total or None): how far a long operation got (the CLI draws a bar)
Progress = Callable[[int, int | None], None]

SUBMIT_OPTIONS = {
    "delay",
    "debounce",
    "entity",
    "priority",
    "tag",
    "timeout",
    "max_retries",
    "retry_interval",
    "retry_backoff",
    "retry_max_interval",
    "retry_jitter",
    "labels",
    "key",
    "tz",
    # accept a name that neither this process's plugin directory nor any live worker knows
    "allow_unknown",
}


def _bad(e: Exception) -> BadInput:
    return BadInput(str(e))


def _labels(labels: Any) -> dict[str, str]:
    try:
        return opt.check_labels(labels)
    except opt.InvalidInput as e:
        raise _bad(e) from e


def _id(value: Any, what: str = "task id") -> int:
    """An id that can exist (1 to 2**63 - 1), else BadInput: exit 2, not a database error."""
    try:
        return opt.check_id(value, what)
    except opt.InvalidInput as e:
        raise _bad(e) from e


class TaskManager:
    """Submit, schedule, control and inspect tasks; run a worker in-process with start()."""

    import_output: TextIO | None = None
    """Where plugin files' import-time output (`print` at module level) goes; None leaves
    stdout alone. The CLI sets sys.stderr: its stdout carries only the command's output."""

    cli: bool = False
    """True when the `flowd` command drives this manager: errors then name its flags
    (`--allow-unknown`) instead of Python parameters (`allow_unknown=True`)."""

    def __init__(
        self,
        db_url: str | None = None,
        *,
        config: str | None = None,
        clock: Callable[[], datetime] | None = None,
        **settings: Any,
    ) -> None:
        """`TaskManager("postgresql+psycopg://…", max_retries=5)`: any setting of the settings list
        as a keyword; those not given come from FLOWD_* variables and the TOML file (`config`,
        else $FLOWD_CONFIG, else ./config/flowd.toml or ./flowd.toml), as for the CLI.

        Safe to share between threads; `close()` (or a `with` block) releases its connections.
        `clock` replaces the wall clock (tests drive time with it).
        """
        self.cli = bool(settings.pop("_cli", False))
        given = settings.pop("settings", None)
        if isinstance(db_url, Settings):  # TaskManager(Settings(...)): a ready Settings object
            given, db_url = db_url, None
        if isinstance(given, Settings):  # a ready Settings object (embedding code, tests)
            self.settings = given
        else:
            if given is not None:
                settings["settings"] = given
            unknown = sorted(set(settings) - set(Settings.model_fields))
            if unknown:
                raise BadInput(
                    f"unknown setting(s) {', '.join(unknown)}: TaskManager takes the settings of the settings list "
                    f"(e.g. db_url, handlers_dir, max_retries, timeout) as keyword arguments"
                )
            try:
                self.settings = load_settings(config, db_url=db_url, **settings)
            except BadInput as e:
                if self.cli:
                    raise
                # name the Python argument, not a command-line flag
                raise BadInput(str(e).replace("flags or config", "TaskManager(...) arguments or config")) from e
        self._db: Database | None = None
        self._registry: Registry | None = None
        self._loader: PluginLoader | None = None
        self._watching: threading.Event | None = None
        self._code_handlers: dict[str, HandlerSpec] = {}
        self._removed: set[str] = set()
        self._reported: set[str] = set()  # plugin files whose failure is already logged
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._clock: Callable[[], datetime] = clock or utcnow
        # one lock for the lazily built parts (engine, registry, waiters): threads share a manager
        self._lazy = threading.RLock()
        self._waiters: Waiters | None = None
        self._modules: Registry | None = None

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _param(self, name: str, python: str | None = None) -> str:
        """How the caller spells parameter `name`: `--name` for the CLI, `python` (or `name`) in Python."""
        return "--" + name.replace("_", "-") if self.cli else (python or name)

    # -- wiring ----------------------------------------------------------------------
    @property
    def db(self) -> Database:
        if self._db is None:
            with self._lazy:
                if self._db is None:
                    s = self.settings
                    self._db = Database(
                        s.db_url,
                        pool_size=s.db_pool_size,
                        # a SQLite connection costs no server slot: one per running attempt and then some
                        sqlite_pool_size=min(max(s.max_concurrent_tasks + 2, 5), 50),
                        sqlite_synchronous=s.sqlite_synchronous,
                        pooled=s.db_pooled,
                        listen_url=s.db_listen_url,
                    )
        return self._db

    def registry(self, *, require_dir: bool = False) -> Registry:
        """Handlers from the plugin directory, the handler modules, and those registered with `use()`.

        `require_dir` (the worker): a handlers directory given explicitly must exist; the default
        one is created when missing (unless handler modules are configured), and a module that
        fails to import is left in the registry's errors for the worker to log. Otherwise a
        module that fails to import is refused (BadInput: the CLI exits 2).
        """
        with self._lazy:
            if self._registry is None:
                self._registry = self._load_dir(require_dir)
            if self._modules is None:
                output = self.import_output
                with contextlib.redirect_stdout(output) if output is not None else contextlib.nullcontext():
                    self._modules = load_modules(self.settings.handler_modules)
        if self._modules.errors and not require_dir and self._worker is None:
            raise BadInput(next(iter(self._modules.errors.values())))
        merged = merge(self._registry, self._modules)
        return merged.with_handlers(self._code_handlers.values()).without(self._removed)

    def _load_dir(self, require_dir: bool) -> Registry:
        d = Path(self.settings.handlers_dir)
        if not d.is_dir() and require_dir:
            if self.settings.handler_modules:
                if "handlers_dir" in self.settings.model_fields_set:
                    get_logger("flowd.plugins").warning(
                        "handlers_dir_missing", path=str(d), serving="handler modules only"
                    )
            elif "handlers_dir" in self.settings.model_fields_set:
                raise BadInput(
                    f"handlers directory {d} does not exist: create it, or pass "
                    f"{self._param('handlers', 'handlers_dir=')} / FLOWD_HANDLERS_DIR"
                )
            else:
                # `flowd worker` in an empty directory: make the default plugin directory (watched:
                # a file dropped there is loaded) and say where it is
                d.mkdir(parents=True, exist_ok=True)
                get_logger("flowd.plugins").warning(
                    "handlers_dir_created",
                    path=str(d.resolve()),
                    hint="put handler files (*.py) there, or pass --module / set FLOWD_HANDLER_MODULES",
                )
        if not d.is_dir():
            return Registry()
        self._loader = PluginLoader(d, self.settings.plugin_import_timeout)
        output = self.import_output
        with contextlib.redirect_stdout(output) if output is not None else contextlib.nullcontext():
            base, _changes = self._loader.load()
        # a plugin that blocks at import is given up on at the timeout, and said so:
        # a command must never hang, nor wait silently
        for path in self._loader.timed_out():
            get_logger("flowd.plugins").error("plugin_load_failed", file=path, error=base.errors[path])
            self._reported.add(path)
        return base

    def handler_steps(self, name: str) -> dict[str, float] | None:
        """The steps a handler declares (for display), if this process knows the handler."""
        try:
            spec = self.registry().get(name)
        except PluginError:
            return None
        return spec.steps if spec is not None else None

    def reload_plugins(self) -> list[str]:
        """Rescan the plugin directory and swap the worker's handlers; returns what changed.

        New claims use the new handlers at once; attempts already running keep theirs.
        """
        if self._loader is None:
            return []
        log = get_logger("flowd.plugins")
        try:
            base, changes = self._loader.load()
        except PluginError as e:
            log.error("plugins_reload_failed", error=str(e))
            return []
        for path, err in self._loader.new_errors.items():
            log.error("plugin_load_failed", file=path, error=err, traceback=self._loader.traceback_of(path))
        if changes:
            # one assignment: claims read either the old registry or the new one, never a mix
            self._registry = base
            log.info("plugins_reloaded", changes=changes, handlers=base.names())
            self._refresh_worker()
        return changes

    def _watch_plugins(self) -> threading.Event | None:
        """Start hot reload when it is on and there is a plugin directory; returns its stop flag."""
        if not self.settings.reload or self._loader is None:
            return None
        from flowd.plugins import watch

        stop = threading.Event()
        watch(self._loader.directory, self.reload_plugins, stop)
        return stop

    def close(self) -> None:
        """Stop the background worker (or close one made with make_worker), the waiters and the database."""
        self.stop()
        if self._waiters is not None:
            self._waiters.close()
            self._waiters = None
        if self._worker is not None and self._worker.started and not self._worker.closed:
            self._worker.close()
        if self._db is not None:
            self._db.dispose()

    # -- handlers --------------------------------------------------------------------
    def use(self, name: str | Mapping[str, Any], fn: Callable[..., Any] | Mapping[str, Any] | None = None) -> None:
        """Register handlers in code: `use(name, fn)`, `use(name, {"handler", "options"})`, `use({...})`."""
        if isinstance(name, Mapping):
            for n, f in name.items():
                self.use(n, f)
            return
        try:
            if isinstance(fn, Mapping):
                spec = make_spec(name, fn["handler"], fn.get("options"))
            elif fn is not None:
                spec = make_spec(name, fn)
            else:
                raise BadInput(f"use({name!r}) needs a handler function")
        except opt.InvalidInput as e:
            raise _bad(e) from e
        self._code_handlers[name] = spec
        self._removed.discard(name)
        self._refresh_worker()

    def unuse(self, names: str | Sequence[str]) -> None:
        for n in [names] if isinstance(names, str) else names:
            self._code_handlers.pop(n, None)
            self._removed.add(n)
        self._refresh_worker()

    def _refresh_worker(self) -> None:
        if self._worker is not None:
            self._worker.registry = self.registry()
            self._worker.wake()  # claim (and publish) with the new handlers now

    # -- submitting ------------------------------------------------------------------
    def _handler_defaults(
        self, name: str, allow_unknown: bool, fleet: dict[str, list[HandlerRecord]]
    ) -> dict[str, Any]:
        """The handler's task options: from the local plugin directory, else from what live
        workers publish (the newest publication wins); an unknown name is refused unless
        `allow_unknown` (then the settings apply)."""
        reg = self.registry()
        spec = reg.get(name)
        if spec is not None:
            return dict(spec.options)
        if name not in fleet:
            fleet[name] = self.fleet_handlers(name)
        options = catalog.newest_options(fleet[name])
        if options is not None:
            return options
        if allow_unknown:
            return {}
        known = ", ".join(sorted(set(reg.names()) | {h.name for h in self.fleet_handlers()})) or "none"
        raise opt.InvalidInput(
            f"no handler named {name!r}: no live worker serves it and {self.settings.handlers_dir} declares none "
            f"(known: {known}); start a worker that has it, or pass "
            f"{self._param('allow_unknown', 'allow_unknown=True')} to queue it anyway"
        )

    def fleet_handlers(self, name: str | None = None) -> list[HandlerRecord]:
        """The handlers live workers publish (all, or those of one name), by name then worker."""
        return catalog.live(self.db, self._clock(), name)

    def _new_task(
        self,
        name: str,
        payload: Any,
        options: Mapping[str, Any],
        now: datetime,
        fleet: dict[str, list[HandlerRecord]] | None = None,
    ) -> NewTask:
        fleet = {} if fleet is None else fleet
        unknown = set(options) - SUBMIT_OPTIONS
        if unknown:
            raise BadInput(f"unknown option(s) {sorted(unknown)}")
        try:
            opt.check_name(name)
            payload = opt.check_payload(payload, self.settings.max_payload_bytes)
            own = opt.check_options({k: options.get(k) for k in opt.OPTION_KEYS})
            defaults = self._handler_defaults(name, bool(options.get("allow_unknown")), fleet)
            resolved = opt.resolve(own, defaults, task_defaults(self.settings))
            delay = opt.check_delay(options.get("delay"))
            labels = opt.check_labels(options.get("labels"))
            tag = options.get("tag")
            key = options.get("key")
            if tag is not None:
                opt.check_text("tag", tag)
            if key is not None:
                opt.check_text("key", key)
            keys = cons.task_keys(name, payload, labels, self.settings.constraints, defaults)
            entity = flow_rules.check_entity(options.get("entity"))
        except (opt.InvalidInput, PluginError) as e:
            raise _bad(e) from e
        return NewTask(
            name=name,
            payload=payload,
            priority=resolved.priority,
            tag=tag,
            labels=labels,
            key=key,
            max_retries=resolved.max_retries,
            retry_interval=resolved.retry_interval,
            retry_backoff=resolved.retry_backoff,
            retry_max_interval=resolved.retry_max_interval,
            retry_jitter=resolved.retry_jitter,
            timeout=resolved.timeout,
            next_run_time=after(now, delay),
            constraints=keys,
            entity=entity,
        )

    def submit(self, name: str, payload: Mapping[str, Any] | None = None, **options: Any) -> TaskId:
        """Enqueue an async task; returns its id (the existing one for a repeated `key`).

        `debounce=S` (with `key`): the run starts S seconds after the last submission of the
        burst; a submission while the key's task is still pending replaces its payload and
        pushes its start instead of adding a task.
        """
        now = self._clock()
        options = dict(options)
        debounce = options.pop("debounce", None)
        if debounce is not None:
            if not options.get("key"):
                raise BadInput(
                    f"{self._param('debounce')} needs {self._param('key')}: "
                    "the key names the task a burst of submissions replaces"
                )
            if options.get("delay"):
                raise BadInput(f"{self._param('debounce')} sets the start itself: drop {self._param('delay')}")
            try:
                options["delay"] = opt.check_delay(debounce, "debounce")
            except opt.InvalidInput as e:
                raise _bad(e) from e
        new = self._new_task(name, payload if payload is not None else {}, options, now)
        with self.db.write() as conn:
            if new.key and debounce is not None:
                pending = task_store.find_pending_by_key(conn, new.key)
                if pending is not None and task_store.debounce(conn, pending, new, now):
                    return pending.id
            elif new.key:
                existing = task_store.find_active_by_key(conn, new.key, TaskType.ASYNC)
                if existing is not None:
                    return existing.id
            (tid,) = task_store.insert_tasks(conn, [new], now)
        self._wake()
        return tid

    def submit_many(self, items: Sequence[tuple[str, Mapping[str, Any]]], **options: Any) -> list[TaskId]:
        """Bulk enqueue (one transaction): `items` are (name, payload) pairs sharing `options`."""
        now = self._clock()
        fleet: dict[str, list[HandlerRecord]] = {}  # one look-up per name, not per item
        # the options resolve the same for every item of a name: only the payloads differ
        templates: dict[str, tuple[NewTask, list[cons.Constraint]]] = {}
        copies: list[task_store.Copy] = []
        for name, payload in items:
            if name not in templates:
                tpl = self._new_task(name, {}, options, now, fleet)
                handler_options = self._handler_defaults(name, bool(options.get("allow_unknown")), fleet)
                try:
                    groups = cons.groups_for(name, self.settings.constraints, handler_options.get("constraints") or ())
                except opt.InvalidInput as e:
                    raise _bad(e) from e
                templates[name] = (tpl, groups)
            tpl, groups = templates[name]
            try:
                text = opt.payload_json(payload, self.settings.max_payload_bytes)
            except opt.InvalidInput as e:
                raise _bad(e) from e
            # constraint keys render from each item's own payload
            keys = tuple(cons.keys_for(name, payload or {}, tpl.labels, groups)) if groups else ()
            copies.append((tpl, text, keys))
        with self.db.write() as conn:
            ids = task_store.insert_copies(conn, copies, now)
        self._wake()
        return ids

    def cron(self, name: str, expr: str, payload: Mapping[str, Any] | None = None, **options: Any) -> TaskId:
        """Schedule a recurring task; with `key`, create or update the one schedule of that key."""
        now = self._clock()
        options = dict(options)
        tz = options.pop("tz", None) or self.settings.timezone or cron_rules.local_zone_name()
        if options.get("delay"):
            raise BadInput(f"{self._param('delay')} does not apply to cron tasks: the expression decides when they run")
        try:
            norm = cron_rules.validate(expr)
            cron_rules.zone(tz)
            first = cron_rules.next_fire(norm, tz, now)
        except cron_rules.CronError as e:
            raise _bad(e) from e
        base = self._new_task(name, payload if payload is not None else {}, options, now)
        new = replace(base, type=TaskType.CRON, cron_expr=norm, cron_tz=tz, next_run_time=first)
        with self.db.write() as conn:
            if new.key:
                existing = task_store.find_active_by_key(conn, new.key, TaskType.CRON)
                if existing is not None:
                    task_store.update_fields(
                        conn,
                        existing.id,
                        {
                            "name": new.name,
                            "payload": new.payload,
                            "cron_expr": norm,
                            "cron_tz": tz,
                            "priority": new.priority,
                            "tag": new.tag,
                            "labels": dict(new.labels) or None,
                            "max_retries": new.max_retries,
                            "retry_interval": new.retry_interval,
                            "retry_backoff": new.retry_backoff,
                            "retry_max_interval": new.retry_max_interval,
                            "retry_jitter": new.retry_jitter,
                            "timeout": new.timeout,
                            "next_run_time": first,
                        },
                        now,
                    )
                    return existing.id
            (tid,) = task_store.insert_tasks(conn, [new], now)
        self._wake()
        return tid

    # -- flows ---------------------------------------------------------------------
    def start_flow(
        self,
        steps: Sequence[Mapping[str, Any]],
        join: Mapping[str, Any],
        *,
        failure_policy: str = "continue",
        timeout: float | None = None,
        entity: tuple[str, str] | str | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> int:
        """Start a fan-out/fan-in flow (steps in parallel, then one join task); returns the flow id."""
        return self._start_flow(
            flow_rules.FLOW,
            steps,
            join,
            failure_policy=failure_policy,
            timeout=timeout,
            entity=entity,
            name=name,
            labels=labels,
        )

    def start_chain(
        self,
        steps: Sequence[Mapping[str, Any]],
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        entity: tuple[str, str] | str | None = None,
    ) -> int:
        """Start a chain: steps one after another, each given `payload["previous_result"]`."""
        return self._start_flow(flow_rules.CHAIN, steps, None, name=name, labels=labels, entity=entity)

    def _start_flow(self, kind: str, steps: Any, join: Any, labels: Mapping[str, str] | None, **kw: Any) -> int:
        now = self._clock()
        try:
            fleet: dict[str, list[HandlerRecord]] = {}
            resolver = flows.Resolver(
                lambda name: self._handler_defaults(name, False, fleet),
                task_defaults(self.settings),
                self.settings.constraints,
                self.settings.max_payload_bytes,
            )
            inherit = flows.Inherit.of(None, opt.check_labels(labels))
            plan = flows.plan(resolver, kind, steps, join, inherit=inherit, **kw)
        except (opt.InvalidInput, PluginError) as e:
            raise _bad(e) from e
        with self.db.write() as conn:
            flow_id = flows.start(conn, plan, now)
        self._wake()
        return flow_id

    def constraints(self) -> dict[str, Any]:
        """`flowd constraints`: the groups (config and local handlers) and each key in use."""
        groups = []
        for name, d in sorted(self.settings.constraints.items()):
            try:
                c = cons.from_mapping(name, d)
            except opt.InvalidInput as e:
                raise BadInput(f"config constraint {name!r}: {e}") from e
            groups.append({**c.as_dict(), "source": "config"})
        by_group: dict[str, dict[str, Any]] = {}
        for spec in self.registry().handlers.values():
            for d in spec.options.get("constraints") or ():
                g = by_group.setdefault(d["name"], {**d, "applies_to": [], "source": "handler"})
                g["applies_to"].append(spec.name)
        groups += [by_group[n] for n in sorted(by_group) if n not in self.settings.constraints]
        with self.db.read() as conn:
            keys = constraint_store.in_use(conn, self._clock())
        return {"groups": groups, "keys": keys}

    def entity(self, entity_type: str, entity_id: str, limit: int = 100) -> dict[str, Any]:
        """What is happening to one domain object: its tasks' projected states, newest first."""
        self.check_page(limit, 0)
        try:
            entity_type, entity_id = flow_rules.check_entity((entity_type, entity_id)) or (entity_type, entity_id)
        except opt.InvalidInput as e:
            raise _bad(e) from e
        with self.db.read() as conn:
            rows = entity_store.of_entity(conn, entity_type, entity_id, limit)
        tasks = [
            {
                "task_id": r["task_id"],
                "name": r["name"],
                "status": r["status"],
                "result": r["result"],
                "error": r["error"],
                "created_at": iso(r["created_at"]),
                "updated_at": iso(r["updated_at"]),
                "started_at": iso(r["started_at"]),
                "ended_at": iso(r["ended_at"]),
            }
            for r in rows
        ]
        return {"entity": {"type": entity_type, "id": entity_id}, "tasks": tasks}

    def get_flow(self, flow_id: int) -> dict[str, Any]:
        """A flow as JSON: its status and policy outcome, every step, and the join task."""
        _id(flow_id, "flow id")
        found = flows.show(self.db, flow_id)
        if found is None:
            raise NotFound(f"flow {flow_id} not found")
        return flow_json(*found)

    def _wake(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    # -- control ---------------------------------------------------------------------
    def pause_task(self, task_id: int, reason: str | None = None) -> TaskRecord:
        _id(task_id)
        return ops.pause_task(self.db, task_id, self._clock(), reason)

    def resume_task(self, task_id: int, reason: str | None = None) -> TaskRecord:
        _id(task_id)
        t = ops.resume_task(self.db, task_id, self._clock(), reason)
        self._wake()
        return t

    def cancel_task(self, task_id: int, reason: str | None = None) -> TaskRecord:
        _id(task_id)
        return ops.cancel_task(self.db, task_id, self._clock(), reason)

    def retry_task(self, task_id: int, reason: str | None = None) -> TaskRecord:
        """Retry now: a failed, timed-out or permanently failed task back to pending (fresh retry budget)."""
        t = ops.retry_task(self.db, task_id, self._clock(), reason)
        self._wake()
        return t

    def delete_task(self, task_id: int) -> int:
        """Delete one task with its events and attempts (as `flowd delete` does); NotFound if absent."""
        with self.db.write() as conn:
            n, _e, _a = task_store.delete(conn, [TaskId(task_id)])
        if not n:
            raise NotFound(f"task {task_id} not found: check the id with `flowd list`")
        return n

    # -- reading ---------------------------------------------------------------------
    def get_task(self, task_id: int) -> TaskRecord:
        _id(task_id)
        with self.db.read() as conn:
            t = task_store.get(conn, task_id)
        if t is None:
            raise NotFound(f"task {task_id} not found: check the id with `flowd list`")
        return t

    # -- waiting for results -----------------------------------------------------------
    def _ended_or_none(self, task_id: int) -> TaskRecord | None:
        t = self.get_task(task_id)
        if t.type is TaskType.CRON:
            raise BadInput(
                f"task {task_id} is a cron schedule: it never ends, so there is nothing to wait for "
                "(read its last result with get_task)"
            )
        return t if t.status in task_store.ENDED_STATUSES else None

    def _waiter(self) -> Waiters:
        from flowd.engine.waiting import Waiters  # asyncio and the watcher load only when someone waits

        with self._lazy:
            if self._waiters is None:
                self._waiters = Waiters(self.db, self.settings.poll_interval)
            return self._waiters

    @staticmethod
    def _check_timeout(timeout: float | None) -> float | None:
        import math

        if timeout is None:
            return None
        try:
            t = float(timeout)
        except (TypeError, ValueError) as e:
            raise BadInput(f"timeout must be a number of seconds (or None), not {timeout!r}") from e
        if not math.isfinite(t) or t < 0:
            raise BadInput(f"timeout must be >= 0 seconds (or None to wait without limit), not {timeout!r}")
        return t

    def wait(self, task_id: int, timeout: float | None = None) -> TaskRecord:
        """Block until the task is `completed` or `permanently_failed`; returns it.

        Raises `TimeoutError` when `timeout` seconds pass first, NotFound for an unknown id and
        BadInput for a cron task (it never ends). Wakes as workers do (PostgreSQL LISTEN/NOTIFY,
        the SQLite WAL watch, the MySQL probe), with `poll_interval` as the fallback; one watcher
        serves every thread of this manager.
        """
        import time

        limit = self._check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        waiters = None
        while True:
            t = self._ended_or_none(task_id)
            if t is not None:
                return t
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {task_id} is still {self.get_task(task_id).status.value} after {limit:g}s")
            waiters = waiters or self._waiter()
            waiters.wait(TaskId(task_id), left)
            # ended, or the time is up: the loop reads the task again (a resumed task waits on)

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """The task's result once it completed; raises `flowd.TaskFailed` (`.task_id`, `.error`)
        if it ended permanently failed, `TimeoutError` as `wait` does."""
        return _result_of(self.wait(task_id, timeout))

    async def submit_async(self, name: str, payload: Mapping[str, Any] | None = None, **options: Any) -> TaskId:
        """`submit` for asyncio code: the database work runs on a thread, never on the event loop."""
        import asyncio

        return await asyncio.to_thread(self.submit, name, payload, **options)

    async def wait_async(self, task_id: int, timeout: float | None = None) -> TaskRecord:
        """`wait` for asyncio code: the event loop is never blocked (a future resolved by the watcher)."""
        import asyncio
        import time

        limit = self._check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        waiters = None
        while True:
            t = await asyncio.to_thread(self._ended_or_none, task_id)
            if t is not None:
                return t
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                status = (await asyncio.to_thread(self.get_task, task_id)).status.value
                raise TimeoutError(f"task {task_id} is still {status} after {limit:g}s")
            waiters = waiters or self._waiter()
            await waiters.wait_async(TaskId(task_id), left)

    async def result_async(self, task_id: int, timeout: float | None = None) -> Any:
        """`result` for asyncio code."""
        return _result_of(await self.wait_async(task_id, timeout))

    @staticmethod
    def check_page(limit: int, offset: int, order: str = "asc") -> None:
        """Refuse a bad page request (BadInput): limit >= 1, offset >= 0, order asc|desc."""
        if not 1 <= limit <= MAX_ID:
            raise BadInput(f"limit must be positive and at most {MAX_ID}, not {limit}")
        if not 0 <= offset <= MAX_ID:
            raise BadInput(f"offset must be >= 0 and at most {MAX_ID}, not {offset}")
        if order not in ("asc", "desc"):
            raise BadInput(f"order must be asc or desc, not {order!r}")

    @staticmethod
    def task_filter(**filters: Any) -> TaskFilter:
        status = filters.get("status")
        if isinstance(status, str):
            status = [status]
        valid = {"pending", "running", "completed", "failed", "timeout", "permanently_failed", "paused", "suspended"}
        for s in status or []:
            if s not in valid:
                raise BadInput(f"unknown status {s!r}: use one of {', '.join(sorted(valid))}")
        typ = filters.get("type")
        if typ is not None and typ not in ("async", "cron"):
            raise BadInput(f"unknown type {typ!r}: use async or cron")
        try:
            for what in ("name", "tag", "worker_id"):
                if filters.get(what) is not None:
                    opt.check_text(what, filters[what])
        except opt.InvalidInput as e:
            raise _bad(e) from e
        for what in ("parent_id", "root_id"):
            if filters.get(what) is not None:
                _id(filters[what], what.replace("_", " "))
        return TaskFilter(
            status=status or None,
            name=filters.get("name"),
            type=typ,
            tag=filters.get("tag"),
            labels=_labels(filters.get("labels")) or None,
            parent_id=filters.get("parent_id"),
            root_id=filters.get("root_id"),
            worker_id=filters.get("worker_id"),
        )

    def query_tasks(self, limit: int = 100, offset: int = 0, order: str = "desc", **filters: Any) -> Page:
        """Tasks matching the filters of `flowd list`, one page (newest first by default)."""
        self.check_page(limit, offset, order)
        f = self.task_filter(**filters)
        with self.db.read() as conn:
            return task_store.query(conn, f, limit, offset, order)

    def task_audit(
        self,
        task_id: int,
        *,
        event_types: Sequence[str] | None = None,
        attempt: int | None = None,
        stage: int | None = None,
        worker_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
        order: str = "asc",
    ) -> dict[str, Any]:
        """`{"task", "events": Page, "attempts": Page}`; the filters narrow the events.

        `attempt` and `worker_id` narrow the attempts too; `limit`/`offset` page the events
        (the attempts page shares `limit`, from the first).
        """
        _id(task_id)
        self.check_page(limit, offset, order)
        unknown = sorted(set(event_types or ()) - {e.value for e in EventType})
        if unknown:
            raise BadInput(f"unknown event type(s) {unknown}: use e.g. task_failed, task_checkpoint, task_progress")
        if attempt is not None and not 1 <= attempt <= PRIORITY_MAX:
            raise BadInput(f"attempt numbers start at 1 and end at {PRIORITY_MAX}, not {attempt}")
        if stage is not None and not 0 <= stage <= PRIORITY_MAX:
            raise BadInput(f"stage must be >= 0 and at most {PRIORITY_MAX}, not {stage}")
        if since is not None and until is not None and since > until:
            raise BadInput(f"{self._param('since')} is after {self._param('until')}: nothing can match")
        ef = EventFilter(
            event_types=list(event_types) if event_types else None,
            attempt=attempt,
            stage=stage,
            worker_id=worker_id,
            since=since,
            until=until,
        )
        af = AttemptFilter(worker_id=worker_id, attempt=attempt)
        return views.task_audit(self.db, task_id, ef, af, limit, offset, order)

    def events(
        self,
        *,
        after_id: int | None = None,
        task_id: int | None = None,
        root_id: int | None = None,
        name: str | None = None,
        event_types: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """Events after `after_id` in id order (or the newest `limit` when it is None)."""
        self.check_page(limit, 0)
        if after_id is not None and after_id != 0:
            _id(after_id, "event id")
        if task_id is not None:
            _id(task_id)
        if root_id is not None:
            _id(root_id, "workflow id")
        unknown = sorted(set(event_types or ()) - {e.value for e in EventType})
        if unknown:
            raise BadInput(f"unknown event type(s) {unknown}: use e.g. task_failed, task_checkpoint, task_progress")
        f = EventFilter(
            task_id=task_id,
            root_id=root_id,
            task_name=name,
            after_id=after_id,
            event_types=list(event_types) if event_types else None,
        )
        with self.db.read() as conn:
            if after_id is None:
                page = event_store.query(conn, f, limit, 0, "desc")
                return list(reversed(page.items))
            return list(event_store.query(conn, f, limit, 0, "asc").items)

    def workflow_audit(self, task_id: int, limit: int = 10000, offset: int = 0) -> dict[str, Any]:
        _id(task_id)
        self.check_page(limit, offset)
        return views.workflow_audit(self.db, task_id, limit, offset)

    def workflow_tree(self, task_id: int) -> Any:
        _id(task_id)
        return views.workflow_tree(self.db, task_id)

    def workflow_summary(self, task_id: int) -> dict[str, Any]:
        _id(task_id)
        return views.workflow_summary(self.db, task_id, self._clock())

    def stats(self, tag: str | None = None, by_label: str | None = None) -> list[dict[str, Any]]:
        """Counts by tag, name and status; with `by_label`, by that label's value, name and status."""
        if by_label is None:
            with self.db.read() as conn:
                rows = task_store.stats(conn, tag)
            return [{"tag": t, "name": n, "status": s, "count": c} for t, n, s, c in rows]
        if not by_label.strip():
            raise BadInput(
                f"{self._param('by_label')} needs a label key, e.g. "
                + ("--by-label tenant" if self.cli else "by_label='tenant'")
            )
        with self.db.read() as conn:
            grouped = task_store.stats_by_labels(conn, tag)
        counts: dict[tuple[str | None, str, str], int] = {}
        for labels, name, status, n in grouped:
            k = (labels.get(by_label), name, status)
            counts[k] = counts.get(k, 0) + n
        # tasks without the label come last, under value null
        order = sorted(counts, key=lambda k: (k[0] is None, k[0] or "", k[1], k[2]))
        return [
            {"label": by_label, "value": v, "name": n, "status": s, "count": counts[(v, n, s)]} for v, n, s in order
        ]

    def overview(self, minutes: int = 15) -> dict[str, Any]:
        """The web dashboard's overview: status counts, throughput a minute, oldest due task, workers, cron."""
        from flowd.audit import dashboard

        if minutes < 1:
            raise BadInput(f"minutes must be >= 1, not {minutes}")
        return dashboard.overview(self.db, self._clock(), minutes=minutes)

    def dashboard(self, *, window: float = 60.0, bucket: float = 5.0) -> dict[str, Any]:
        """Everything `flowd top` shows, as one plain dict (one consistent read)."""
        from flowd.audit import dashboard

        if not 0 < bucket <= window <= MAX_SECONDS:
            raise BadInput("the dashboard needs 0 < bucket <= window (seconds)")
        return dashboard.snapshot(self.db, self._clock(), window=window, bucket=bucket)

    def workers(self, status: str | None = None, limit: int = 100, offset: int = 0) -> Page:
        self.check_page(limit, offset)
        with self.db.read() as conn:
            running = task_store.running_counts(conn)
            return worker_store.query(conn, running, status, limit, offset)

    # -- deleting --------------------------------------------------------------------
    def delete_tasks(self, progress: Progress | None = None, **filters: Any) -> int:
        """Delete matching tasks with their events and attempts (one transaction); returns the count.

        `progress(done, total)` is told how far the deletion got, chunk by chunk.
        """
        everything = bool(filters.pop("all", False))
        f = self.task_filter(**filters)
        if not everything and f == TaskFilter():
            raise BadInput(
                "delete needs a filter (e.g. --status completed), or --all to delete every task"
                if self.cli
                else "delete_tasks needs a filter (e.g. status='completed'), or all=True to delete every task"
            )
        with self.db.write() as conn:
            ids = task_store.matching_ids(conn, f)
            total = len(ids)
            if progress is not None:
                progress(0, total)
            n, _e, _a = task_store.delete(conn, ids, (lambda done: progress(done, total)) if progress else None)
        return n

    def run_retention(
        self, policy: retention_mod.Policy | Mapping[str, Any] | None = None, progress: Progress | None = None
    ) -> dict[str, int]:
        """Delete expired terminal tasks now; `progress(deleted, None)` after each batch."""
        if policy is None:
            policy = retention_mod.Policy(self.settings.retention_expire_time, tuple(self.settings.retention_statuses))
        elif isinstance(policy, Mapping):
            statuses = tuple(policy.get("statuses") or self.settings.retention_statuses)
            bad = [s for s in statuses if s not in retention_mod.DELETABLE]
            if bad:
                raise BadInput(f"retention deletes only {', '.join(retention_mod.DELETABLE)}; not {bad}")
            try:
                given = policy.get("expire_time", self.settings.retention_expire_time)
                expire = opt.check_seconds("expire time", given)
            except opt.InvalidInput as e:
                raise _bad(e) from e
            policy = retention_mod.Policy(expire, statuses)
        on_batch = (lambda done: progress(done, None)) if progress else None
        return retention_mod.run(self.db, policy, self._clock(), on_batch=on_batch).as_dict()

    def db_upgrade(self) -> str:
        self.db.create_schema()
        return self.db.display_url

    def db_current(self) -> dict[str, Any]:
        """The database's schema revision and this code's head; reads only (creates nothing)."""
        current, head = self.db.schema_version()
        return {"url": self.db.display_url, "current": current, "head": head, "up_to_date": current == head}

    def _doctor_checks(self, config: str | None) -> list[dict[str, Any]]:
        from flowd.settings import config_path

        source = config_path(config)
        loaded = f"loaded ({'file ' + str(source) if source else 'no settings file'})"
        stray = unknown_env()
        if stray:
            checks = [_check("settings", "fail", f"{loaded}; {len(stray)} unknown FLOWD_* variable(s)", stray)]
        else:
            checks = [_check("settings", "pass", loaded)]
        handlers = _doctor_handlers(
            Path(self.settings.handlers_dir), self.settings.plugin_import_timeout, self.settings.handler_modules
        )
        try:
            db = self.db
            if db.sqlite_file is not None and not Path(db.sqlite_file).exists():
                # connecting would create an empty file: report it missing instead
                raise DatabaseUnavailable(f"no SQLite file at {db.sqlite_file}: run `flowd db upgrade`")
            version, server, local = db.server_info(self._clock)
            current, head = db.schema_version()
        except FlowdError as e:
            skipped = [_check(n, "skip", "database not reachable") for n in ("schema", "clock", "pooler", "capacity")]
            return [*checks, _check("database", "fail", str(e)), skipped[0], handlers, *skipped[1:]]
        known = db.is_known_revision(current) if current else False
        return [
            *checks,
            _check("database", "pass", f"{db.display_url} reachable ({db.dialect} {version})"),
            _doctor_schema(current, head, known),
            handlers,
            _doctor_clock(server, local, db.dialect),
            *self._doctor_pooling(current == head),
        ]

    def _doctor_pooling(self, schema_ready: bool) -> list[dict[str, Any]]:
        """The pooler and connections checks (PostgreSQL; skipped elsewhere)."""
        from flowd.registry import catalog

        db, s = self.db, self.settings
        try:
            report = db.pooling_report()
            fleet = catalog.fleet_size(db, self._clock()) if schema_ready and report is not None else 0
        except FlowdError as e:
            return [_check("pooler", "fail", str(e)), _check("capacity", "skip", "database not reachable")]
        if report is None:
            skip = f"{db.dialect}: PostgreSQL only"
            return [_check("pooler", "skip", skip), _check("capacity", "skip", skip)]
        return [
            _doctor_pooler(report, s.db_pooled, s.poll_interval),
            _doctor_connections(report, s.db_pool_size, fleet),
        ]

    # -- the in-process worker -------------------------------------------------------
    def make_worker(self, *, require_dir: bool = False) -> Worker:
        from flowd.engine.worker import Worker

        reg = self.registry(require_dir=require_dir)
        self._worker = Worker(self.settings, self.db, reg, clock=self._clock)
        return self._worker

    def start(self) -> None:
        """Run a worker on a background thread of this process."""
        if self._thread is not None:
            return
        worker = self.make_worker()
        self._stop_event = threading.Event()
        self._watching = self._watch_plugins()
        worker.start()
        self._thread = threading.Thread(
            target=worker.run_forever, args=(self._stop_event,), name="flowd-worker", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background worker gracefully (running attempts drain)."""
        if self._thread is None or self._worker is None:
            return
        self._worker.request_stop()
        if self._watching is not None:
            self._watching.set()
        self._thread.join(timeout if timeout is not None else self.settings.shutdown_grace + 5)
        self._thread = None
        self._worker = None

    def pause(self) -> None:
        """Stop claiming (running attempts go on)."""
        if self._worker is not None:
            self._worker.pause()

    def resume(self) -> None:
        if self._worker is not None:
            self._worker.resume()

    def run_worker(self, *, install_signals: bool = True) -> dict[str, int]:
        """Run a worker in the foreground until SIGTERM/SIGINT; the first signal drains.

        A second signal exits at once; what was running is then recovered like a crash.
        """
        import os
        import signal

        worker = self.make_worker(require_dir=True)
        reg = worker.registry
        if reg.errors:
            log = get_logger("flowd.plugins")
            for path, err in reg.errors.items():
                if path in self._reported:
                    continue
                tb = self._loader.traceback_of(path) if self._loader is not None else None
                log.error("plugin_load_failed", file=path, error=err, traceback=tb)
        if install_signals:

            def on_signal(signum: int, _frame: Any) -> None:
                if worker.stopping:
                    os._exit(1)
                worker.request_stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        server = None
        if self.settings.metrics_port is not None:
            # imported only when asked for: prometheus_client stays off a plain worker's start-up
            from flowd.engine import metrics

            server = metrics.serve(worker, self.settings.metrics_host, self.settings.metrics_port)
        watching = self._watch_plugins()
        try:
            worker.run_forever()
        finally:
            if watching is not None:
                watching.set()
            if server is not None:
                server.close()
        return worker.summary()


def _result_of(t: TaskRecord) -> Any:
    if t.status is TaskStatus.PERMANENTLY_FAILED:
        raise TaskFailed(t.id, t.error)
    return t.result


def connect(db_url: str | None = None, *, config: str | None = None, **settings: Any) -> TaskManager:
    """A TaskManager, for scripts: `with flowd.connect("postgresql+psycopg://…") as tm: …`."""
    return TaskManager(db_url, config=config, **settings)


# Above this, `flowd doctor` fails the clock check. Leases are generous (30 s by default),
# but skew across hosts adds up: each host is compared with the database, the one shared clock.
MAX_CLOCK_SKEW = 2.0


def _check(name: str, status: str, detail: str, errors: Sequence[str] = ()) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "errors": list(errors)}


def doctor(config: str | None = None, **overrides: Any) -> dict[str, Any]:
    """`flowd doctor`: settings, database, schema, handlers and clock checks; writes nothing."""
    checks: list[dict[str, Any]] = []
    names = ("database", "schema", "handlers", "clock", "pooler", "capacity")
    try:
        m = TaskManager(config=config, **overrides)
    except FlowdError as e:
        checks.append(_check("settings", "fail", str(e), unknown_env()))
        checks += [_check(n, "skip", "settings did not load") for n in names]
        return {"ok": False, "checks": checks}
    try:
        checks += m._doctor_checks(config)
    finally:
        m.close()
    return {"ok": all(c["status"] != "fail" for c in checks), "checks": checks}


def _doctor_schema(current: str | None, head: str, known: bool) -> dict[str, Any]:
    if current == head:
        return _check("schema", "pass", f"at revision {head} (current)")
    if current is None:
        return _check("schema", "fail", f"no flowd schema (this flowd expects {head}): run `flowd db upgrade`")
    if known:
        return _check("schema", "fail", f"at revision {current}, this flowd expects {head}: run `flowd db upgrade`")
    return _check(
        "schema", "fail", f"at revision {current}, unknown to this flowd (head {head}): a newer flowd migrated it"
    )


def _doctor_handlers(directory: Path, import_timeout: float, modules: Sequence[str] = ()) -> dict[str, Any]:
    if not directory.is_dir() and not modules:
        return _check("handlers", "fail", f"{directory} is not a directory: create it or set FLOWD_HANDLERS_DIR")
    # the worker's import timeout: a plugin that blocks at import is a FAIL, not a hang
    plugins = PluginLoader(directory, import_timeout).load()[0] if directory.is_dir() else Registry()
    reg = merge(plugins, load_modules(modules))
    where = ", ".join([*([str(directory)] if directory.is_dir() else []), *modules])
    if reg.errors:
        # each error already reads "file:line: Type: message" (or names the module)
        return _check(
            "handlers",
            "fail",
            f"{len(reg.errors)} file(s) or module(s) of {where} failed to import",
            list(reg.errors.values()),
        )
    listed = ", ".join(reg.names()) or "none found"
    return _check("handlers", "pass", f"{len(reg.handlers)} handler(s) in {where}: {listed}")


def _doctor_pooler(r: dict[str, Any], setting: str, poll_interval: float) -> dict[str, Any]:
    """Each thing a transaction-mode pooler forbids, checked: startup options, the statement
    limit inside a transaction, prepared statements, LISTEN."""
    timeout = f"statement_timeout {r['statement_timeout']:g}s in force"
    if r["listen_error"] is not None:
        return _check("pooler", "fail", f"db_listen_url: {r['listen_error']}")
    if not r["pooled"]:
        if r["listen_pooled"]:  # db_pooled = true on a direct URL: correct, but no LISTEN
            fix = f"db_pooled = true: workers poll every {poll_interval:g}s (set it to auto, or set db_listen_url)"
            return _check("pooler", "warn", f"direct connection; {timeout}; {fix}")
        return _check("pooler", "pass", f"direct connection; {timeout}; LISTEN works")
    if setting == "false":
        return _check("pooler", "fail", "a pooler answers but db_pooled = false: set it to auto or true")
    if r["statement_timeout"] <= 0:
        return _check("pooler", "fail", "a pooler answers and statement_timeout is not in force inside a transaction")
    detail = f"a pooler answers: no startup options, {timeout} (SET LOCAL per transaction), no prepared statements; "
    if r["listen_pooled"]:
        fix = f"LISTEN cannot work through it: workers poll every {poll_interval:g}s (set db_listen_url: a direct URL)"
        return _check("pooler", "warn", detail + fix)
    return _check("pooler", "pass", detail + "LISTEN on db_listen_url, a direct connection")


def _doctor_connections(r: dict[str, Any], pool_size: int, fleet: int) -> dict[str, Any]:
    """Connections in use against max_connections, and how many more workers fit."""
    usable = r["max_connections"] - r["reserved"]
    per_worker = pool_size + 1
    detail = (
        f"{r['in_use']} of {r['max_connections']} in use ({r['reserved']} reserved for superusers); "
        f"{fleet} worker(s) live, each up to db_pool_size + 1 = {per_worker}"
    )
    if r["pooled"]:
        return _check("capacity", "pass", detail + "; behind the pooler, its pool is what the server sees")
    room = (usable - r["in_use"]) // per_worker
    if r["in_use"] >= usable * 0.9:
        return _check("capacity", "fail", detail + ": the server is nearly full; put PgBouncer in front")
    if room < max(5, fleet // 4):
        return _check("capacity", "warn", detail + f": room for {room} more worker(s); consider PgBouncer")
    return _check("capacity", "pass", detail + f"; room for about {room} more worker(s)")


def _doctor_clock(server: datetime | None, local: datetime, dialect: str) -> dict[str, Any]:
    if server is None:
        return _check("clock", "skip", f"{dialect} uses this host's clock: nothing to compare")
    skew = (server - local).total_seconds()
    ahead = "ahead of" if skew >= 0 else "behind"
    detail = f"the database clock is {abs(skew):.3f}s {ahead} this host (limit {MAX_CLOCK_SKEW:g}s)"
    if abs(skew) > MAX_CLOCK_SKEW:
        return _check("clock", "fail", detail + ": synchronise both with NTP (e.g. systemd-timesyncd)")
    return _check("clock", "pass", detail)
