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
