"""Bad input through the command line: one line on stderr, exit 2, nothing written, no SQL,
no payload echoed, no traceback; the same on every database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Result

Run = Callable[..., Result]


@pytest.fixture
def run(db_url: str, flowd: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The `flowd` fixture on each backend (the database first: `flowd` clears FLOWD_* variables)."""
    monkeypatch.setenv("FLOWD_DB_URL", db_url)
    return flowd


def _refused(r: Result, *words: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert r.out == ""
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowd: error: "), r.err
    for w in words:
        assert w in r.err, r.err
    for leak in ("SQL", "INSERT", "parameters", "hunter2", "Traceback"):
        assert leak not in r.err, r.err


SECRET = '{"password": "hunter2"}'


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--timeout", "1e300"], "timeout"),
        (["--timeout", "3e11"], "timeout"),
        (["--retry-interval", "1e300"], "retry_interval"),
        (["--delay", "1e300"], "delay"),
        (["--key", "k", "--debounce", "1e300"], "debounce"),
        (["--priority", "99999999999"], "priority"),
        (["--max-retries", "99999999999999"], "max_retries"),
        (["--tag", "t" * 256], "tag"),
        (["--key", "k" * 256], "key"),
        (["--label", "tenant=" + "v" * 256], "label"),
        (["--entity", "user:" + "u" * 256], "entity"),
    ],
)
def test_submit__out_of_range_option__exit_2_one_line_nothing_written(run: Run, args: list[str], named: str) -> None:
    _refused(run("submit", "echo", SECRET, *args), named)
    assert run("list", "--json").json()["total"] == 0


def test_cron__out_of_range_option_refused_too(run: Run) -> None:
    _refused(run("cron", "echo", "* * * * *", SECRET, "--priority", "99999999999"), "priority")
    _refused(run("cron", "echo", "* * * * *", SECRET, "--timeout", "1e300"), "timeout")
    assert run("list", "--json").json()["total"] == 0


def test_payload__lone_surrogate_deep_nesting_non_utf8_file(run: Run, tmp_path: Path) -> None:
    _refused(run("submit", "echo", '{"a": "\\ud800"}'), "lone surrogate")
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100_000)
    _refused(run("submit", "echo", f"@{deep}"), "nested too deeply")
    _refused(run("submit", "echo", '{"a":' + "[" * 150 + "]" * 150 + "}"), "nested too deeply")
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"name": "Müller"}'.encode("latin-1"))
    _refused(run("submit", "echo", f"@{latin}"), "not UTF-8")
    _refused(run("submit", "echo", '{"n": ' + "9" * 5000 + "}"), "payload")
    assert run("list", "--json").json()["total"] == 0


def test_payload__over_max_payload_bytes_names_the_setting(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    big = json.dumps({"blob": "x" * 1_048_576})
    _refused(run("submit", "echo", big), "max_payload_bytes=1048576")
    monkeypatch.setenv("FLOWD_MAX_PAYLOAD_BYTES", "20")
    _refused(run("submit", "echo", '{"blob": "xxxxxxxxxxxxxxxxxxxx"}'), "max_payload_bytes=20")
    _refused(run("flow", "chain", "--step", 'echo:{"blob": "xxxxxxxxxxxxxxxxxxxx"}'), "max_payload_bytes=20")
    assert run("list", "--json").json()["total"] == 0
    assert run("submit", "echo", '{"a": 1}').code == 0


def test_ids_and_pages_past_64_bits__exit_2_while_a_missing_id_is_exit_1(run: Run) -> None:
    huge = "99999999999999999999999"
    for args in (
        ["show", huge],
        ["cancel", huge],
        ["audit", "task", huge],
        ["audit", "summary", huge],
        ["flow", "show", huge],
        ["list", "--offset", huge],
        ["list", "--limit", huge],
        ["list", "--parent", huge],
        ["events", "--task", huge],
    ):
        _refused(run(*args), "9223372036854775807")
    r = run("show", "9223372036854775807")
    assert r.code == 1 and "not found" in r.err


def test_argument_that_is_not_utf8__exit_2(run: Run) -> None:
    # what Python makes of `--tag $'\xff'` (undecodable bytes become lone surrogates)
    _refused(run("submit", "echo", "{}", "--tag", "\udcff"), "argument 5")
    _refused(run("list", "--tag", "\udcff"), "not valid UTF-8")
    assert run("list", "--json").json()["total"] == 0


def test_argument_that_is_not_utf8__from_a_real_shell(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    env.update(FLOWD_DB_URL=f"sqlite:///{tmp_path / 'f.db'}", FLOWD_HANDLERS_DIR=str(tmp_path))
    exe = Path(sys.executable).with_name("flowd")
    p = subprocess.run([str(exe), "list", "--tag", b"\xff"], capture_output=True, env=env, timeout=60)  # type: ignore[list-item]
    assert p.returncode == 2 and p.stdout == b""
    assert p.stderr.decode().splitlines() == [
        "flowd: error: argument 3 is not valid UTF-8 text: pass text in the UTF-8 encoding"
    ]


def test_database_error__one_line_without_sql_or_parameters(flowd: Run, tmp_path: Path) -> None:
    import sqlite3

    assert flowd("db", "upgrade").code == 0
    # the database itself refuses the insert (a trigger): the error reaches the CLI boundary
    con = sqlite3.connect(tmp_path / "flowd.db")
    con.execute("CREATE TRIGGER refuse BEFORE INSERT ON flowd_tasks BEGIN SELECT RAISE(ABORT, 'no inserts'); END")
    con.commit()
    con.close()
    r = flowd("submit", "echo", SECRET)
    assert r.code == 1 and len(r.err.splitlines()) == 1, r.err
    assert "the database refused a statement" in r.err
    for leak in ("SQL", "INSERT", "hunter2", "parameters"):
        assert leak not in r.err, r.err


def test_unknown_toml_key__refused_naming_the_closest_setting(run: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "flowd.toml"
    cfg.write_text("max_concurent_tasks = 5\n")
    r = run("list", "--config", str(cfg))
    _refused(r, "'max_concurent_tasks'", "did you mean 'max_concurrent_tasks'")
    cfg.write_text("[constraints.x]\nkey = '{payload[k]}'\n")  # a known table is fine
    assert run("list", "--config", str(cfg)).code == 0


def test_unknown_env_variable__warned_on_stderr_and_failed_by_doctor(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWD_DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("FLOWD_LOG_FORMAT", "json")
    r = run("list", "--json")
    assert r.code == 0 and r.json()["total"] == 0  # stdout stays one document
    [line] = r.err.splitlines()
    rec = json.loads(line)
    assert rec["level"] == "warning" and "FLOWD_DATABASE_URL" in rec["message"]
    assert "did you mean FLOWD_DB_URL?" in rec["message"]
    doctor = run("doctor", "--json")
    assert doctor.code == 1
    settings = next(c for c in doctor.json()["checks"] if c["name"] == "settings")
    assert settings["status"] == "fail" and "FLOWD_DATABASE_URL" in settings["errors"][0]
    # variables flowd documents for itself are not settings, and not typos
    monkeypatch.delenv("FLOWD_DATABASE_URL")
    monkeypatch.setenv("FLOWD_DEBUG", "0")
    monkeypatch.setenv("FLOWD_TEST_POSTGRES_URL", "postgresql+psycopg://x@127.0.0.1/x")
    r = run("list", "--json")
    assert r.code == 0 and r.err == ""
