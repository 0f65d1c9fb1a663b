"""Handler plugins: the `@handler` decorator, and building a registry from a directory.

`@handler` only tags a function; nothing is registered globally. `load_dir` imports every
`*.py` in the plugin directory (files starting with `_` are helper modules, not plugins)
and builds a fresh, validated `Registry`; the worker swaps registries atomically.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from flowd.limits import MAX_SECONDS
from flowd.logging import importing
from flowd.model import EventType
from flowd.rules.constraints import Constraint
from flowd.rules.options import OPTION_KEYS, InvalidInput, check_name, check_options

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__flowd_handler__"
HOOK_MARK = "__flowd_hooks__"

# what `@on` accepts: the audit event names, and the worker's own start and stop
WORKER_EVENTS = ("worker_started", "worker_stopped")
HOOK_EVENTS = frozenset({e.value for e in EventType} | set(WORKER_EVENTS))
DEFAULT_HOOK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler as the engine runs it: the callable, its default options and origin."""

    name: str
    fn: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    version: str | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def max_concurrent(self) -> int | None:
        v = self.options.get("max_concurrent")
        return int(v) if v is not None else None

    @property
    def schedule(self) -> dict[str, Any] | None:
        """The schedule declared with `@handler(..., cron=...)`: `{"cron", "tz", "payload"}`, or None."""
        v = self.options.get("schedule")
        return dict(v) if v else None

    @property
    def steps(self) -> dict[str, float] | None:
        """Declared steps (name → weight) for `task.step()`, if any."""
        v = self.options.get("steps")
        return dict(v) if v else None

    def task_options(self) -> dict[str, Any]:
        """The options that become task defaults (max_concurrent is a worker limit)."""
        return {k: v for k, v in self.options.items() if k in OPTION_KEYS}


def handler(
    name: str,
    *,
    timeout: float | None = None,
    max_retries: int | None = None,
    retry_interval: float | None = None,
    priority: int | None = None,
    max_concurrent: int | None = None,
    steps: Mapping[str, float] | None = None,
    constraints: Sequence[Constraint] | None = None,
    retry_backoff: str | None = None,
    retry_max_interval: float | None = None,
    retry_jitter: bool | None = None,
    cron: str | None = None,
    tz: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Callable[[F], F]:
    """Declare a function (sync or `async def`) as the handler for task `name`.

    `constraints`: groups made with `flowd.constraint(...)` that its tasks must respect.
    `cron` (with optional `tz` and `payload`): a schedule that exists while a worker serving
    this handler runs, kept under the key `handler:<name>` (see `schedule_key`).
    """
    check_name(name)
    if cron is None and (tz is not None or payload is not None):
        raise InvalidInput(f"@handler({name!r}): tz and payload describe a schedule: give cron= as well")
    opts = check_options(
        {
            "timeout": timeout,
            "max_retries": max_retries,
            "retry_interval": retry_interval,
            "priority": priority,
            "retry_backoff": retry_backoff,
            "retry_max_interval": retry_max_interval,
            "retry_jitter": retry_jitter,
            "max_concurrent": max_concurrent,
            "steps": steps,
            "constraints": list(constraints) if constraints else None,
            "schedule": {"cron": cron, "tz": tz, "payload": payload} if cron is not None else None,
        }
    )

    def mark(fn: F) -> F:
        declared = list(getattr(fn, MARK, ()))
        declared.append((name, opts))
        setattr(fn, MARK, tuple(declared))
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class HookSpec:
    """A lifecycle hook: `fn(event)` runs after the event's transaction has committed."""

    event: str
    fn: Callable[..., Any]
    timeout: float = DEFAULT_HOOK_TIMEOUT
    source: str | None = None

    @property
    def label(self) -> str:
        """`file.py:function`, for the log."""
        where = Path(self.source).name if self.source else "code"
        return f"{where}:{getattr(self.fn, '__qualname__', repr(self.fn))}"


def on(event: str, *, timeout: float = DEFAULT_HOOK_TIMEOUT) -> Callable[[F], F]:
    """Run a function (sync or `async def`) when a worker writes `event` (an audit event name,
    or worker_started / worker_stopped): after the commit, off the claim loop, cut off after
    `timeout` seconds; what it raises is logged and never affects the task."""
    if event not in HOOK_EVENTS:
        raise InvalidInput(f"@on({event!r}): unknown event; use one of {', '.join(sorted(HOOK_EVENTS))}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_SECONDS:
        raise InvalidInput(f"@on({event!r}): timeout must be positive seconds, not {timeout!r}")

    def mark(fn: F) -> F:
        setattr(fn, HOOK_MARK, (*getattr(fn, HOOK_MARK, ()), (event, float(timeout))))
        return fn

    return mark


class PluginError(Exception):
    """A plugin file that could not be loaded; the message names the file and line.

    `traceback` is the formatted traceback of the import's exception, when there was one.
    """

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


class PluginImportTimeout(PluginError):
    """A plugin file whose import did not finish in time (it blocks at import)."""


@dataclass(frozen=True)
class Registry:
    """An immutable name → HandlerSpec mapping, plus the load errors that produced it."""

    handlers: Mapping[str, HandlerSpec] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    hooks: Mapping[str, tuple[HookSpec, ...]] = field(default_factory=dict)

    def get(self, name: str) -> HandlerSpec | None:
        return self.handlers.get(name)

    @functools.cached_property
    def versions(self) -> dict[str, str | None]:
        """Handler name → the version of the plugin that declares it (recorded per attempt)."""
        return {name: spec.version for name, spec in self.handlers.items()}

    def names(self) -> list[str]:
        return sorted(self.handlers)

    def __contains__(self, name: object) -> bool:
        return name in self.handlers

    def with_handlers(self, specs: Iterable[HandlerSpec]) -> Registry:
        merged = dict(self.handlers)
        for s in specs:
            merged[s.name] = s
        return Registry(merged, self.errors, self.files, self.hooks)

    def without(self, names: Iterable[str]) -> Registry:
        drop = set(names)
        kept = {k: v for k, v in self.handlers.items() if k not in drop}
        return Registry(kept, self.errors, self.files, self.hooks)


def specs_of_module(module: ModuleType, source: str | None = None, version: str | None = None) -> list[HandlerSpec]:
    """The handlers a module declares with `@handler`."""
    out: list[HandlerSpec] = []
    seen: set[int] = set()
    for obj in list(vars(module).values()):
        marks = getattr(obj, MARK, None)
        if not marks or id(obj) in seen or not callable(obj):
            continue
        seen.add(id(obj))
        for name, opts in marks:
            out.append(HandlerSpec(name=name, fn=obj, options=dict(opts), source=source, version=version))
    return out


def hooks_of_module(module: ModuleType, source: str | None = None) -> list[HookSpec]:
    """The hooks a module declares with `@on`."""
    out: list[HookSpec] = []
    seen: set[int] = set()
    for obj in list(vars(module).values()):
        marks = getattr(obj, HOOK_MARK, None)
        if not marks or id(obj) in seen or not callable(obj):
            continue
        seen.add(id(obj))
        out.extend(HookSpec(event=event, fn=obj, timeout=timeout, source=source) for event, timeout in marks)
    return out


def file_version(path: Path, extra: bytes = b"") -> str:
    """A short content hash of a plugin file, and of the helper modules beside it."""
    return hashlib.sha256(path.read_bytes() + extra).hexdigest()[:12]


def helpers_digest(directory: Path) -> bytes:
    """The content of every helper module (`_*.py`): a plugin's version covers them too."""
    h = hashlib.sha256()
    for p in sorted(directory.glob("_*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.digest()


def _forget_helpers(directory: Path) -> None:
    """Drop helper modules from sys.modules so the next plugin import reads them afresh."""
    for p in directory.glob("_*.py"):
        mod = sys.modules.get(p.stem)
        if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == p.resolve():
            del sys.modules[p.stem]
    importlib.invalidate_caches()


def _exec_file(path: Path, source: bytes) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    mod_name = f"flowd_plugin_{path.stem}_{digest}"
    module = ModuleType(mod_name)
    module.__file__ = str(path)
    parent = str(path.parent.resolve())
    # sibling helper modules (handlers/_common.py) import by their plain name
    if parent not in sys.path:
        sys.path.insert(0, parent)
    try:
        # compile the bytes we hashed (never a cached .pyc): the version is what runs
        code = compile(source, str(path), "exec")
        with importing(str(path)):  # what it prints now is its import-time output
            exec(code, module.__dict__)
    except BaseException as e:
        tb = traceback.extract_tb(e.__traceback__)
        mine = path.resolve()
        where = next((f"{path}:{fr.lineno}" for fr in reversed(tb) if Path(fr.filename).resolve() == mine), str(path))
        if isinstance(e, SyntaxError):
            where = f"{path}:{e.lineno}"
        tb_text = "".join(traceback.format_exception(e))
        raise PluginError(f"{where}: {type(e).__name__}: {e}", tb_text) from e
    sys.modules[mod_name] = module
    return module


def _import_file(path: Path, timeout: float | None = None) -> ModuleType:
    """Execute a plugin file; an import that blocks past `timeout` seconds is abandoned."""
    source = path.read_bytes()
    if timeout is None:
        return _exec_file(path, source)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["module"] = _exec_file(path, source)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name=f"flowd-import-{path.stem}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise PluginImportTimeout(
            f"{path}: import did not finish within {timeout:g}s, gave up on it "
            "(a plugin must not block at import; see the plugin_import_timeout setting)"
        )
    if "error" in box:
        err = box["error"]
        if isinstance(err, PluginError):
            raise err
        raise PluginError(f"{path}: {type(err).__name__}: {err}", "".join(traceback.format_exception(err))) from err
    module: ModuleType = box["module"]
    return module


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one plugin file declared, at one version."""

    version: str
    handlers: list[HandlerSpec]
    hooks: list[HookSpec]


def load_plugin(path: Path, *, extra: bytes = b"", timeout: float | None = None) -> Loaded:
    """Import one plugin file; returns its handlers and hooks (raises PluginError)."""
    version = file_version(path, extra)
    module = _import_file(path, timeout)
    return Loaded(version, specs_of_module(module, str(path), version), hooks_of_module(module, str(path)))


def load_file(path: Path, *, extra: bytes = b"", timeout: float | None = None) -> list[HandlerSpec]:
    """Import one plugin file and return its handlers (raises PluginError)."""
    return load_plugin(path, extra=extra, timeout=timeout).handlers


def plugin_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith(("_", ".")))


class PluginLoader:
    """Loads a plugin directory and reloads only what changed, keeping the last good version.

    A changed file is re-imported (its import side effects run once per load); a file that
    fails to import keeps its previous handlers and hooks, and is not retried (nor reported
    again) until its content changes; a deleted file drops its handlers and hooks; a changed
    helper module (`_*.py`) reloads every plugin.
    """

    def __init__(self, directory: Path, import_timeout: float | None = 10.0) -> None:
        self.directory = directory
        self.import_timeout = import_timeout
        self._loaded: dict[Path, Loaded] = {}
        self._failed: dict[Path, tuple[str, PluginError]] = {}  # path -> (version, error)
        self.new_errors: dict[str, str] = {}
        """The failures the last `load()` found for the first time (log them once)."""

    def timed_out(self) -> list[str]:
        """The files whose last import was abandoned at the timeout (keys of the registry's errors)."""
        return [str(p) for p, (_v, e) in self._failed.items() if isinstance(e, PluginImportTimeout)]

    def traceback_of(self, path: str) -> str | None:
        """The traceback of the failed import of `path` (a key of the registry's errors)."""
        failed = self._failed.get(Path(path))
        return failed[1].traceback if failed is not None else None

    def load(self) -> tuple[Registry, list[str]]:
        """Scan the directory; returns the registry and what changed (for the log)."""
        d = self.directory
        if not d.is_dir():
            raise PluginError(f"handlers directory {d} does not exist: create it or set FLOWD_HANDLERS_DIR")
        extra = helpers_digest(d)
        files = plugin_files(d)
        changes: list[str] = []
        self.new_errors = {}
        if any(p in self._loaded and self._loaded[p].version != file_version(p, extra) for p in files):
            _forget_helpers(d)
        for gone in (set(self._loaded) | set(self._failed)) - set(files):
            if self._loaded.pop(gone, None) is not None:
                changes.append(f"removed {gone.name}")
            self._failed.pop(gone, None)
        for path in files:
            try:
                version = file_version(path, extra)
            except OSError:  # deleted between the listing and the read: the next event says so
                continue
            old = self._loaded.get(path)
            if (old is not None and old.version == version) or self._failed.get(path, ("",))[0] == version:
                continue
            try:
                loaded = load_plugin(path, extra=extra, timeout=self.import_timeout)
            except PluginError as e:
                self._failed[path] = (version, e)
                self.new_errors[str(path)] = str(e)
                kept = " (the previous version stays)" if old is not None else ""
                changes.append(f"failed {path.name}{kept}")
                continue
            self._failed.pop(path, None)
            self._loaded[path] = loaded
            changes.append(f"{'reloaded' if old else 'loaded'} {path.name} @{version}")
        errors = {str(p): str(err) for p, (_v, err) in self._failed.items()}
        handlers: dict[str, HandlerSpec] = {}
        hooks: dict[str, list[HookSpec]] = {}
        for path, loaded in sorted(self._loaded.items()):
            for spec in loaded.handlers:
                if spec.name in handlers:
                    errors[str(path)] = (
                        f"{path}: handler {spec.name!r} is already declared in {handlers[spec.name].source}"
                    )
                    continue
                handlers[spec.name] = spec
            for hook in loaded.hooks:
                hooks.setdefault(hook.event, []).append(hook)
        versions = {str(p): loaded.version for p, loaded in self._loaded.items()}
        frozen = {event: tuple(hs) for event, hs in hooks.items()}
        return Registry(handlers, errors, versions, frozen), changes


def load_dir(directory: Path) -> Registry:
    """Build a registry from every plugin file; a file that fails is reported in `errors`."""
    return PluginLoader(directory, import_timeout=None).load()[0]


def watch(directory: Path, on_change: Callable[[], object], stop: threading.Event) -> threading.Thread:
    """Call `on_change` (debounced) whenever a `.py` file of the directory changes.

    watchfiles reports an editor's write-via-rename as a delete plus an add; the loader
    rescans the whole directory, so either way the new content is what gets loaded.
    """
    import watchfiles

    def only_python(_change: Any, path: str) -> bool:
        return path.endswith(".py")

    def run() -> None:
        for _changes in watchfiles.watch(
            directory, watch_filter=only_python, debounce=200, step=50, stop_event=stop, recursive=False
        ):
            on_change()

    t = threading.Thread(target=run, name="flowd-reload", daemon=True)
    t.start()
    return t


def make_spec(name: str, fn: Callable[..., Any], options: Mapping[str, Any] | None = None) -> HandlerSpec:
    """A HandlerSpec for a function registered in code (`TaskManager.use`)."""
    check_name(name)
    if not callable(fn):
        raise InvalidInput(f"handler for {name!r} is not callable")
    opts = dict(options or {})
    if any(k in opts for k in ("cron", "tz", "payload")):
        # use(name, {"handler": fn, "options": {"cron": ..., "tz": ..., "payload": ...}}) as @handler takes them
        if opts.get("cron") is None:
            raise InvalidInput(f"handler {name!r}: tz and payload describe a schedule: give cron as well")
        opts["schedule"] = {"cron": opts.pop("cron"), "tz": opts.pop("tz", None), "payload": opts.pop("payload", None)}
    return HandlerSpec(name=name, fn=fn, options=check_options(opts))


MODULE_SOURCE = "module:"
"""The `source` of a handler imported from a module (`module:myapp.tasks`), not a plugin file."""


def load_modules(names: Sequence[str]) -> Registry:
    """Import handler modules by dotted name from the Python path, the working directory included.

    Each module is imported once per process (Python's own module cache): a change deploys by
    restarting the worker, not by hot reload. A module that fails to import is reported in
    `errors` under its name (one line: the module, the exception); the others still load.
    """
    import importlib
    import os

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # the `flowd` console script puts its own bin directory first, not the working directory
        sys.path.append(cwd)
    handlers: dict[str, HandlerSpec] = {}
    hooks: dict[str, list[HookSpec]] = {}
    errors: dict[str, str] = {}
    for name in names:
        source = MODULE_SOURCE + name
        try:
            module = importlib.import_module(name)
        except BaseException as e:  # SystemExit or KeyboardInterrupt at import is a broken module too
            if isinstance(e, KeyboardInterrupt):
                raise
            errors[source] = f"handler module {name!r} failed to import: {type(e).__name__}: {e}"
            continue
        path = getattr(module, "__file__", None)
        version = file_version(Path(path)) if path and Path(path).is_file() else None
        for spec in specs_of_module(module, source, version):
            if spec.name in handlers:
                errors[source] = f"handler {spec.name!r} is declared twice ({handlers[spec.name].source}, {source})"
                continue
            handlers[spec.name] = spec
        for hook in hooks_of_module(module, source):
            hooks.setdefault(hook.event, []).append(hook)
    return Registry(handlers, errors, {}, {e: tuple(hs) for e, hs in hooks.items()})


def merge(base: Registry, extra: Registry) -> Registry:
    """`base` (the plugin directory) plus `extra` (modules); a name both declare keeps base's, reported."""
    handlers = dict(base.handlers)
    errors = {**base.errors, **extra.errors}
    for name, spec in extra.handlers.items():
        if name in handlers:
            errors[spec.source or name] = f"handler {name!r} is declared in {handlers[name].source} and {spec.source}"
            continue
        handlers[name] = spec
    hooks = {e: (*base.hooks.get(e, ()), *extra.hooks.get(e, ())) for e in set(base.hooks) | set(extra.hooks)}
    return Registry(handlers, errors, base.files, hooks)
