"""Settings: command-line flag > FLOWD_<NAME> environment variable > TOML file > default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flowd.errors import BadInput
from flowd.limits import DEFAULT_MAX_PAYLOAD_BYTES, MAX_BYTES, MAX_RETRIES, MAX_SECONDS

DEFAULT_CONFIG_FILES = (Path("config/flowd.toml"), Path("flowd.toml"))
TERMINAL_STATUSES = ("completed", "permanently_failed", "paused")


class Settings(BaseSettings):
    """Every flowd setting; all durations are seconds (floats allowed)."""

    model_config = SettingsConfigDict(env_prefix="FLOWD_", extra="ignore", validate_default=True)

    db_url: str = Field("sqlite:///flowd.db", min_length=1)
    # a direct PostgreSQL connection for LISTEN when db_url goes through a pooler (None: db_url)
    db_listen_url: str | None = Field(None, min_length=1)
    # whether db_url goes through a transaction-mode pooler (PgBouncer): auto asks the server
    db_pooled: Literal["auto", "true", "false"] = "auto"
    # connections a process keeps to a database server (a worker: plus one for wake-ups)
    db_pool_size: int = Field(1, ge=1, le=100)
    handlers_dir: Path = Path("handlers")
    # importable modules declaring handlers (beside or instead of handlers_dir), imported once
    handler_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pod_id: str | None = Field(None, min_length=1, max_length=128)
    worker_id: str | None = Field(None, min_length=1, max_length=128)
    max_concurrent_tasks: int = Field(10, ge=1, le=10_000)
    poll_interval: float = Field(1.0, gt=0, le=3600)
    max_retries: int = Field(3, ge=1, le=MAX_RETRIES)
    # every duration: at most ten years (flowd.limits), so the worker can compute with it
    retry_interval: float = Field(0.0, ge=0, le=MAX_SECONDS)
    # retries wait retry_interval each time ("fixed"), or retry_interval * 2^(n-1) after the
    # n-th failed attempt ("exponential"), capped by retry_max_interval; jitter: from [w/2, w]
    retry_backoff: Literal["fixed", "exponential"] = "fixed"
    retry_max_interval: float = Field(3600.0, gt=0, le=MAX_SECONDS)
    retry_jitter: bool = False
    timeout: float = Field(60.0, gt=0, le=MAX_SECONDS)
    task_heartbeat_interval: float = Field(5.0, gt=0, le=MAX_SECONDS)
    task_heartbeat_timeout: float = Field(30.0, gt=0, le=MAX_SECONDS)
    worker_heartbeat_interval: float = Field(5.0, gt=0, le=MAX_SECONDS)
    worker_heartbeat_timeout: float = Field(30.0, gt=0, le=MAX_SECONDS)
    recover_running_jobs: bool = True
    # a task whose worker died (or was superseded) this many times in a row while running it
    # ends permanently_failed (a cron task: paused) instead of being recovered again
    max_recoveries: int = Field(3, ge=1, le=1000)
    retention_expire_time: float = Field(86400.0, ge=0, le=MAX_SECONDS)
    retention_statuses: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["completed", "permanently_failed"]
    )
    retention_interval: float = Field(300.0, gt=0, le=MAX_SECONDS)
    timezone: str | None = None
    max_result_bytes: int = Field(1_048_576, ge=1, le=MAX_BYTES)
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=1, le=MAX_BYTES)
    log_format: Literal["console", "json"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: float = Field(60.0, ge=0, le=MAX_SECONDS)
    reload: bool = True
    # seconds a plugin file may take to import before a command gives up on it (worker and CLI alike)
    plugin_import_timeout: float = Field(10.0, gt=0, le=3600)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", min_length=1)
    # `flowd web`: where it listens, and the token every action (and, off loopback, every read) needs
    web_host: str = Field("127.0.0.1", min_length=1)
    web_port: int = Field(8765, ge=0, le=65535)
    web_token: str | None = Field(None, min_length=8, max_length=512)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    # seconds of waiting per +1 priority step in the claim order (None: off)
    priority_aging: float | None = Field(None, gt=0, le=MAX_SECONDS)
    # constraint groups, `[constraints.NAME]` tables: key, max_concurrent, cooldown, applies_to
    constraints: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("retention_statuses", mode="before")
    @classmethod
    def _split_statuses(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.replace(",", " ").split() if s.strip()]
        return v

    @field_validator("handler_modules", mode="before")
    @classmethod
    def _split_modules(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [m.strip() for m in v.replace(",", " ").split() if m.strip()]
        return v

    @field_validator("handler_modules")
    @classmethod
    def _dotted_names(cls, v: list[str]) -> list[str]:
        for m in v:
            if not all(part.isidentifier() for part in m.split(".")):
                raise ValueError(f"{m!r} is not a module name like myapp.tasks")
        return v

    @field_validator("retention_statuses")
    @classmethod
    def _terminal_only(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in TERMINAL_STATUSES]
        if bad:
            raise ValueError(f"retention only deletes {', '.join(TERMINAL_STATUSES)}; not {bad}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"unknown time zone {v!r}") from e
        return v or None

    @field_validator("db_pooled", mode="before")
    @classmethod
    def _pooled_word(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return "true" if v else "false"
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The TOML file in force: `--config`, else $FLOWD_CONFIG, else a default file if present."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BadInput(f"config file {p} not found: fix --config")
        return p
    env = os.environ.get("FLOWD_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise BadInput(f"config file {p} not found: fix $FLOWD_CONFIG")
        return p
    for p in DEFAULT_CONFIG_FILES:
        if p.is_file():
            return p
    return None


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the Settings; `overrides` are command-line flags (None values are ignored)."""
    path = config_path(config)
    flags = {k: v for k, v in overrides.items() if v is not None}
    cls: type[Settings] = Settings
    if path is not None:
        import tomllib

        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
            raise BadInput(f"config file {path} is not valid TOML: {e}") from e
        unknown = sorted(set(doc) - set(Settings.model_fields))
        if unknown:
            raise BadInput(f"config file {path}: unknown setting {unknown[0]!r}{_did_you_mean(unknown[0])}")
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        return cls(**flags)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "settings"
        raise BadInput(f"bad setting {loc}: {err.get('msg')} (check FLOWD_{loc.upper()}, flags or config)") from e


# FLOWD_* variables that are not settings but that flowd or its test suite reads
OTHER_ENV = frozenset(
    {
        "FLOWD_CONFIG",
        "FLOWD_DEBUG",
        "FLOWD_TEST_POSTGRES_URL",
        "FLOWD_TEST_MYSQL_URL",
        "FLOWD_PERF",
        "FLOWD_CHAOS_SECONDS",
        "FLOWD_CHAOS_SEED",
    }
)


def closest_setting(name: str) -> str | None:
    """The setting whose name is nearest to `name` (a likely typo), if any is near enough."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(Settings.model_fields), n=1, cutoff=0.5)
    return close[0] if close else None


def _did_you_mean(name: str) -> str:
    close = closest_setting(name)
    return f" (did you mean {close!r}?)" if close else " (see the settings list in the README)"


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per `FLOWD_*` environment variable that names no setting: a typo there
    (FLOWD_DATABASE_URL) would otherwise be ignored without a word."""
    env = os.environ if environ is None else environ
    out = []
    for var in sorted(env):
        if not var.startswith("FLOWD_") or var in OTHER_ENV:
            continue
        name = var[len("FLOWD_") :].lower()
        if name not in Settings.model_fields:
            close = closest_setting(name)
            hint = f"did you mean FLOWD_{close.upper()}?" if close else "see the settings list in the README"
            out.append(f"environment variable {var} is not a flowd setting and is ignored ({hint})")
    return out


def task_defaults(s: Settings) -> dict[str, Any]:
    """The settings-level task options (the last source `rules.options.resolve` consults)."""
    return {
        "timeout": s.timeout,
        "max_retries": s.max_retries,
        "retry_interval": s.retry_interval,
        "priority": 0,
        "retry_backoff": s.retry_backoff,
        "retry_max_interval": s.retry_max_interval,
        "retry_jitter": s.retry_jitter,
    }
