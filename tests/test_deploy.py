"""The systemd units, environment file and guide under deploy/ say what they should."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SYSTEMD = DEPLOY / "systemd"
FLOWD = "/usr/local/bin/flowd"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections → keys → every value assigned, in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: keep each setting on one line"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}:{number}: setting outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not a Key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def value(unit: Unit, section: str, key: str) -> str:
    """The effective (last) value of a setting."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


@pytest.fixture(scope="module")
def worker() -> Unit:
    return parse_unit(SYSTEMD / "flowd-worker@.service")


@pytest.fixture(scope="module")
def retention() -> Unit:
    return parse_unit(SYSTEMD / "flowd-retention.service")


@pytest.fixture(scope="module")
def timer() -> Unit:
    return parse_unit(SYSTEMD / "flowd-retention.timer")


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/flowd",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}
# a worker must reach its database server and may run handlers that build code at run time
NOT_SET = ("PrivateNetwork", "IPAddressDeny", "IPAddressAllow", "MemoryDenyWriteExecute")

RUNTIME = {
    "EnvironmentFile": "/etc/flowd/flowd.env",
    "User": "flowd",
    "Group": "flowd",
    "WorkingDirectory": "/var/lib/flowd",
    "StateDirectory": "flowd",
}


def test_worker_unit__is_a_notify_service_that_runs_the_pod_named_by_the_instance(worker: Unit) -> None:
    assert value(worker, "Service", "Type") == "notify"
    assert value(worker, "Service", "NotifyAccess") == "main"
    assert value(worker, "Service", "ExecStart") == f"{FLOWD} worker --pod-id %i --no-reload"
    assert value(worker, "Service", "ExecStartPre") == f"{FLOWD} db upgrade"


def test_worker_unit__restarts_always_and_drains_within_the_stop_timeout(worker: Unit) -> None:
    assert value(worker, "Service", "Restart") == "always"
    assert value(worker, "Service", "RestartSec") == "1"
    assert value(worker, "Service", "KillSignal") == "SIGTERM"
    # The drain grace period (shutdown_grace, 60 s) must end before systemd's SIGKILL.
    assert float(value(worker, "Service", "TimeoutStopSec")) > 60
    assert value(worker, "Service", "TimeoutStopSec") == "90"
    assert value(worker, "Service", "WatchdogSec") == "60"


def test_worker_unit__runs_unprivileged_in_its_state_directory(worker: Unit) -> None:
    for key, expected in RUNTIME.items():
        assert value(worker, "Service", key) == expected, key


def test_worker_unit__is_hardened(worker: Unit) -> None:
    for key, expected in HARDENING.items():
        assert value(worker, "Service", key) == expected, key
    assert not [key for key in NOT_SET if key in worker["Service"]]


def _offline_security_supported() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    probe = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return "--offline" in probe.stdout


@pytest.mark.skipif(not _offline_security_supported(), reason="systemd-analyze security --offline unavailable")
@pytest.mark.parametrize("name", ["flowd-worker@.service", "flowd-retention.service"])
def test_units__score_ok_in_systemd_analyze_security(name: str) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(SYSTEMD / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    score, verdict = float(found[1]), found[2]
    # systemd's scale: 0-1 "SAFE", up to 4 "OK", then MEDIUM, EXPOSED and UNSAFE
    assert score <= 4.0 and verdict in ("SAFE", "OK"), (score, verdict)


def test_worker_unit__is_enabled_for_multi_user_boot(worker: Unit) -> None:
    assert value(worker, "Install", "WantedBy") == "multi-user.target"


def test_retention_service__runs_flowd_retention_once_like_the_workers(retention: Unit) -> None:
    assert value(retention, "Service", "Type") == "oneshot"
    assert value(retention, "Service", "ExecStart") == f"{FLOWD} retention"
    for key, expected in {**RUNTIME, **HARDENING}.items():
        assert value(retention, "Service", key) == expected, key
    assert "Install" not in retention, "the timer starts it; it is not enabled on its own"


def test_retention_timer__starts_the_retention_service_hourly(timer: Unit) -> None:
    assert value(timer, "Timer", "OnCalendar") == "hourly"
    assert value(timer, "Timer", "Unit") == "flowd-retention.service"
    assert value(timer, "Install", "WantedBy") == "timers.target"


def test_units__point_at_one_flowd_binary(worker: Unit, retention: Unit) -> None:
    for unit in (worker, retention):
        for key in ("ExecStart", "ExecStartPre"):
            for command in unit["Service"].get(key, []):
                assert command.split()[0] == FLOWD


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units__pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that every Exec*= binary exists: point the copies at one that does.
    existing = shutil.which("true")
    assert existing is not None
    for source in SYSTEMD.iterdir():
        (tmp_path / source.name).write_text(source.read_text().replace(FLOWD, existing))
    # The template is checked through an instance, as systemd loads it.
    units = [tmp_path / "flowd-worker@a.service", tmp_path / "flowd-retention.service"]
    units.append(tmp_path / "flowd-retention.timer")
    proc = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown keys and bad values are only warnings: any line about our units fails.
    complaints = [line for line in output.splitlines() if "flowd" in line]
    assert not complaints, "\n".join(complaints)


ENV_LINE = re.compile(r"^#?(FLOWD_[A-Z0-9_]+)=(.*)$")


def env_file_lines() -> list[tuple[bool, str, str]]:
    """(active, name, value) of every `FLOWD_X=v` and `#FLOWD_X=v` line of deploy/flowd.env."""
    found = []
    for line in (DEPLOY / "flowd.env").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            found.append((not line.startswith("#"), match[1], match[2]))
    return found


def test_env_file__sets_the_deployment_paths_and_json_logs() -> None:
    active = {name: val for is_active, name, val in env_file_lines() if is_active}
    assert active == {
        "FLOWD_DB_URL": "sqlite:////var/lib/flowd/flowd.db",
        "FLOWD_HANDLERS_DIR": "/etc/flowd/handlers",
        "FLOWD_LOG_FORMAT": "json",
    }


def test_env_file__lists_every_setting_and_nothing_else() -> None:
    from flowd.settings import Settings

    expected = {f"FLOWD_{name.upper()}" for name in Settings.model_fields} | {"FLOWD_CONFIG"}
    names = [name for _, name, _ in env_file_lines()]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == expected


# Commented lines that show an example rather than the default.
EXAMPLE_VALUES = {"FLOWD_CONFIG", "FLOWD_TIMEZONE"}


def test_env_file__commented_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flowd.settings import load_settings

    for name in [n for n in os.environ if n.startswith("FLOWD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no config/flowd.toml here
    defaults = load_settings().model_dump()
    for is_active, name, val in env_file_lines():
        if not is_active and val and name not in EXAMPLE_VALUES:
            monkeypatch.setenv(name, val)
    assert load_settings().model_dump() == defaults


def test_guide__quotes_unit_settings_as_the_units_set_them() -> None:
    units = [parse_unit(path) for path in sorted(SYSTEMD.iterdir())]
    settings: dict[str, set[str]] = {}
    for unit in units:
        for section in unit.values():
            for key, values in section.items():
                settings.setdefault(key, set()).update(values)
    # Deliberate overrides the guide shows as examples.
    overrides = {("WatchdogSec", "0")}
    guide = (DEPLOY / "README.md").read_text()
    quoted = re.findall(r"`([A-Za-z]+)=([^`\s]+)`", guide)
    checked = [(k, v) for k, v in quoted if k in settings and (k, v) not in overrides]
    assert checked, "the guide quotes no unit setting"
    wrong = [f"{k}={v}" for k, v in checked if v not in settings[k]]
    assert not wrong, f"deploy/README.md quotes settings the units do not have: {wrong}"


def test_guide__names_only_deployment_paths() -> None:
    guide = (DEPLOY / "README.md").read_text()
    # plus the two HTTP paths of the metrics server, which are not files
    allowed = (
        "/opt/flowd",
        "/usr/local/",
        "/etc/",
        "/var/lib/flowd",
        "/usr/sbin/nologin",
        "/bin/sh",
        "/healthz",
        "/metrics",
    )
    paths = re.findall(r"(?<![\w.:/])(/[a-z][\w.@*-]*(?:/[\w.@*-]+)*)", guide)
    unexpected = sorted({p for p in paths if not p.startswith(allowed)})
    assert not unexpected, f"deploy/README.md names paths outside the deployment layout: {unexpected}"


def _env_file_with_the_json_example(tmp_path: Path) -> tuple[Path, str]:
    """deploy/flowd.env with its FLOWD_CONSTRAINTS example switched on, and that JSON."""
    text = (DEPLOY / "flowd.env").read_text()
    (example,) = re.findall(r"^#\s+FLOWD_CONSTRAINTS=(\{.*\})$", text, re.M)
    text = text.replace("#FLOWD_CONSTRAINTS=\n", f"FLOWD_CONSTRAINTS={example}\n")
    # a password a shell would expand, and a quoted value with spaces
    text += 'FLOWD_POD_ID="pod a"\nFLOWD_DB_URL=postgresql+psycopg://flowd:pa$$word@db/flowd\n'
    path = tmp_path / "flowd.env"
    path.write_text(text)
    return path, example


def test_env_file__read_as_systemd_does_keeps_the_json_example_whole(tmp_path: Path) -> None:
    import json

    from flowd.envfile import parse

    path, example = _env_file_with_the_json_example(tmp_path)
    env = parse(path.read_text())
    assert json.loads(env["FLOWD_CONSTRAINTS"]) == json.loads(example)
    assert env["FLOWD_POD_ID"] == "pod a"
    assert env["FLOWD_DB_URL"] == "postgresql+psycopg://flowd:pa$$word@db/flowd"
    assert env["FLOWD_LOG_FORMAT"] == "json"
    assert not [k for k in env if not k.startswith("FLOWD_")], "comment lines are not variables"
    # what the old wrapper did: a shell splits the JSON into words and fails
    sh = subprocess.run(
        ["sh", "-c", f'set -a; . "{path}"; printf %s "$FLOWD_CONSTRAINTS"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert sh.returncode != 0 or sh.stdout != example


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\n", {"A": "1"}),
        ("  B = spaced value   \n", {"B": "spaced value"}),
        ("# A=1\n; B=2\n", {}),
        ('C="q \\"x\\" \\$HOME"\n', {"C": 'q "x" $HOME'}),
        ("D='lit $x \\n'\n", {"D": "lit $x \\n"}),
        ("E=a\\\nb\n", {"E": "ab"}),
        ("F=abc # kept\n", {"F": "abc # kept"}),
        ('G="multi\nline"\n', {"G": "multi\nline"}),
        ("H=\nno equals sign\nbad-name=1\nI=last", {"H": "", "I": "last"}),
    ],
)
def test_env_file__systemd_syntax(text: str, expected: dict[str, str]) -> None:
    from flowd.envfile import parse

    assert parse(text, warn=False) == expected


def test_flowd_admin__runs_flowd_with_the_env_file_read_as_systemd_does(tmp_path: Path) -> None:
    """The shipped wrapper, with its paths pointed at a scratch layout (runuser aside)."""
    import json
    import sys

    env_file, example = _env_file_with_the_json_example(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    fake_flowd = tmp_path / "flowd"
    fake_flowd.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'cwd': os.getcwd(), 'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
    )
    fake_flowd.chmod(0o755)
    wrapper = (DEPLOY / "flowd-admin").read_text()
    for real, scratch in (
        ("runuser -u flowd -- ", ""),
        ("/opt/flowd/bin/python", sys.executable),
        ("/etc/flowd/flowd.env", str(env_file)),
        ("/usr/local/bin/flowd", str(fake_flowd)),
        ("/var/lib/flowd", str(state)),
    ):
        assert real in wrapper, real
        wrapper = wrapper.replace(real, scratch)
    script = tmp_path / "flowd-admin"
    script.write_text(wrapper)
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        ["sh", str(script), "list", "--status", "running"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == ["list", "--status", "running"] and seen["cwd"] == str(state)
    assert json.loads(seen["env"]["FLOWD_CONSTRAINTS"]) == json.loads(example)
    assert seen["env"]["FLOWD_DB_URL"] == "postgresql+psycopg://flowd:pa$$word@db/flowd"
    assert seen["env"]["FLOWD_HANDLERS_DIR"] == "/etc/flowd/handlers"
