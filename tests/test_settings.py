"""Settings precedence: flag > FLOWD_<NAME> > TOML file > default; bounds on every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowd.errors import BadInput
from flowd.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("FLOWD_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert (s.db_url, s.max_retries, s.timeout, s.poll_interval) == ("sqlite:///flowd.db", 3, 60.0, 1.0)
    assert s.retention_statuses == ["completed", "permanently_failed"]


def test_precedence__flag_over_env_over_toml_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("timeout = 11\nmax_retries = 5\nretry_interval = 2.5\n")
    assert load_settings(cfg).timeout == 11
    monkeypatch.setenv("FLOWD_TIMEOUT", "22")
    s = load_settings(cfg)
    assert (s.timeout, s.max_retries, s.retry_interval) == (22, 5, 2.5)
    assert load_settings(cfg, timeout=33).timeout == 33


def test_default_files__config_dir_then_cwd(tmp_path: Path) -> None:
    (tmp_path / "flowd.toml").write_text("timeout = 4\n")
    assert load_settings().timeout == 4
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "flowd.toml").write_text("timeout = 5\n")
    assert load_settings().timeout == 5


def test_flowd_config_env__names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.toml").write_text("poll_interval = 0.25\n")
    monkeypatch.setenv("FLOWD_CONFIG", str(tmp_path / "x.toml"))
    assert load_settings().poll_interval == 0.25


def test_retention_statuses__from_env_as_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWD_RETENTION_STATUSES", "completed,paused")
    assert load_settings().retention_statuses == ["completed", "paused"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_retries", 0),
        ("timeout", 0),
        ("poll_interval", -1),
        ("max_concurrent_tasks", 0),
        ("retention_statuses", ["running"]),
        ("timezone", "Mars/Base"),
    ],
)
def test_out_of_bounds__refused_with_the_setting_named(key: str, value: object) -> None:
    with pytest.raises(BadInput, match=key):
        load_settings(**{key: value})


def test_missing_or_broken_config_file__refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        load_settings(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("timeout = [\n")
    with pytest.raises(BadInput, match="not valid TOML"):
        load_settings(tmp_path / "bad.toml")


def test_handler_modules__a_list_from_env_toml_or_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().handler_modules == []
    cfg = tmp_path / "m.toml"
    cfg.write_text('handler_modules = ["myapp.tasks"]\n')
    assert load_settings(cfg).handler_modules == ["myapp.tasks"]
    monkeypatch.setenv("FLOWD_HANDLER_MODULES", "myapp.tasks, myapp.reports")
    assert load_settings(cfg).handler_modules == ["myapp.tasks", "myapp.reports"]
    assert load_settings(cfg, handler_modules=["other"]).handler_modules == ["other"]
    monkeypatch.setenv("FLOWD_HANDLER_MODULES", "myapp/tasks.py")
    with pytest.raises(BadInput, match="handler_modules"):
        load_settings()


def test_backoff_settings__bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.retry_backoff, s.retry_max_interval, s.retry_jitter) == ("fixed", 3600.0, False)
    monkeypatch.setenv("FLOWD_RETRY_BACKOFF", "exponential")
    monkeypatch.setenv("FLOWD_RETRY_JITTER", "true")
    s = load_settings()
    assert (s.retry_backoff, s.retry_jitter) == ("exponential", True)
    for name, bad in (("retry_backoff", "linear"), ("retry_max_interval", "0"), ("retry_max_interval", "1e10")):
        monkeypatch.setenv(f"FLOWD_{name.upper()}", bad)
        with pytest.raises(BadInput, match=name):
            load_settings()
        monkeypatch.delenv(f"FLOWD_{name.upper()}")


DURATIONS = [
    "retry_interval",
    "timeout",
    "task_heartbeat_interval",
    "task_heartbeat_timeout",
    "worker_heartbeat_interval",
    "worker_heartbeat_timeout",
    "retention_expire_time",
    "retention_interval",
    "shutdown_grace",
    "priority_aging",
]


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize("value", ["1e300", "3e11", "inf"])
def test_durations__past_ten_years_refused_from_flags_env_and_toml(
    key: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadInput, match=key):
        load_settings(**{key: float(value)})
    monkeypatch.setenv(f"FLOWD_{key.upper()}", value)
    with pytest.raises(BadInput, match=key):
        load_settings()
    monkeypatch.delenv(f"FLOWD_{key.upper()}")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{key} = {value}\n")
    with pytest.raises(BadInput, match=key):
        load_settings(cfg)
    assert getattr(load_settings(**{key: 315_360_000}), key) == 315_360_000


def test_byte_caps__max_payload_bytes_defaults_to_1_mib_and_is_bounded() -> None:
    assert load_settings().max_payload_bytes == 1_048_576
    for key in ("max_payload_bytes", "max_result_bytes"):
        with pytest.raises(BadInput, match=key):
            load_settings(**{key: 0})
        with pytest.raises(BadInput, match=key):
            load_settings(**{key: 2**30 + 1})


def test_unknown_toml_key__refused_naming_the_closest(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_concurent_tasks = 5\n")
    with pytest.raises(
        BadInput, match="unknown setting 'max_concurent_tasks' \\(did you mean 'max_concurrent_tasks'\\?\\)"
    ):
        load_settings(cfg)
    cfg.write_text("zzzzzzzz = 1\n")
    with pytest.raises(BadInput, match="zzzzzzzz"):
        load_settings(cfg)


def test_unknown_env__names_the_closest_setting_and_spares_documented_variables() -> None:
    from flowd.settings import unknown_env

    env = {
        "FLOWD_DATABASE_URL": "x",
        "FLOWD_DB_URL": "x",
        "FLOWD_CONFIG": "x",
        "FLOWD_DEBUG": "1",
        "FLOWD_TEST_POSTGRES_URL": "x",
        "FLOWD_TEST_MYSQL_URL": "x",
        "PATH": "/bin",
    }
    [message] = unknown_env(env)
    assert "FLOWD_DATABASE_URL" in message and "did you mean FLOWD_DB_URL?" in message


def test_db_pooling_settings__words_bools_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.db_pooled, s.db_pool_size, s.db_listen_url) == ("auto", 1, None)
    monkeypatch.setenv("FLOWD_DB_POOLED", "TRUE")
    monkeypatch.setenv("FLOWD_DB_LISTEN_URL", "postgresql+psycopg://flowd@db:5432/flowd")
    s = load_settings()
    assert s.db_pooled == "true" and s.db_listen_url == "postgresql+psycopg://flowd@db:5432/flowd"
    assert load_settings(db_pooled=False).db_pooled == "false"
    for bad in ({"db_pool_size": 0}, {"db_pooled": "sometimes"}):
        with pytest.raises(BadInput):
            load_settings(**bad)
