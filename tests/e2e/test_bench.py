"""`flowd bench` end to end: real worker processes, figures of the right shape (never timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import server_url

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    # a short poll keeps the latency phase (200 one-at-a-time tasks) quick
    env.update(FLOWD_POLL_INTERVAL="0.02", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "flowd", "bench", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bench__json_has_every_figure(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--tasks", "200", "--workers", "1", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["backend"] == "sqlite"
    assert (doc["tasks"], doc["workers"], doc["concurrency"], doc["history"]) == (200, 1, 10, 0)
    for key in ("enqueue_bulk_per_s", "enqueue_single_per_s", "process_per_s", "worker_rss_mb"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    lat = doc["latency_ms"]
    assert set(lat) == {"p50", "p95", "p99"}
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"]
    # the bench cleans up after itself: nothing left in the working directory
    assert list(tmp_path.iterdir()) == []


def test_bench__history_and_skip(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--tasks", "50", "--history", "300", "--skip", "latency,single", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["history"] == 300
    assert doc["enqueue_single_per_s"] is None
    assert doc["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert doc["process_per_s"] > 0


def test_bench__bad_handler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--handler", "spin:3", "--tasks", "10")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--handler" in p.stderr


def test_bench__runs_reports_the_median_of_each_figure(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--tasks", "30", "--runs", "2", "--skip", "latency,single", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["runs"] == 2
    assert doc["process_per_s"] > 0 and doc["enqueue_bulk_per_s"] > 0
    bad = _bench(tmp_path, "--tasks", "10", "--runs", "0")
    assert bad.returncode == 2 and "--runs" in bad.stderr


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_bench__on_a_server_uses_its_own_scratch_database_and_drops_it(kind: str, tmp_path: Path) -> None:
    url = server_url(kind)
    if not url:
        pytest.skip(f"{kind}: set FLOWD_TEST_{kind.upper()}_URL to run")
    engine = sa.create_engine(url)

    def scratch() -> set[str]:
        with engine.connect() as conn:
            q = "SELECT datname FROM pg_database" if kind == "postgres" else "SHOW DATABASES"
            return {r[0] for r in conn.exec_driver_sql(q) if str(r[0]).startswith("flowd_bench_")}

    before = scratch()
    try:
        p = _bench(tmp_path, "--db", url, "--tasks", "60", "--history", "200", "--skip", "latency,single", "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert (doc["backend"], doc["tasks"], doc["history"]) == ({"postgres": "postgresql"}.get(kind, kind), 60, 200)
        assert doc["process_per_s"] > 0 and doc["enqueue_bulk_per_s"] > 0
        assert scratch() == before  # created for the run, dropped after it
    finally:
        engine.dispose()


def _children_cmdlines(parent: int) -> dict[int, str]:
    """pid → command line of every live process whose parent is `parent` (Linux /proc)."""
    out: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = next(
                int(line.split()[1]) for line in (d / "status").read_text().splitlines() if line.startswith("PPid:")
            )
            if ppid == parent:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration, ValueError):
            continue
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_bench__server_password_never_reaches_a_worker_command_line(tmp_path: Path) -> None:
    url = server_url("postgres")
    if not url:
        pytest.skip("postgres: set FLOWD_TEST_POSTGRES_URL to run")
    secret = "s3cret-" + os.urandom(4).hex()
    # trust authentication ignores the password: the run works, and the password is still
    # what a careless bench would pass on to its workers
    with_password = sa.make_url(url).set(password=secret).render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
    env.update(FLOWD_POLL_INTERVAL="0.02", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowd", "bench", "--db", with_password, "--tasks", "100", "--skip", "single"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    try:
        # the workers live through the latency phase and a 2 s idle measurement
        while proc.poll() is None:
            seen |= {c for c in _children_cmdlines(proc.pid).values() if c}  # a zombie's is empty
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert [c for c in seen if " worker" in c], f"no worker process seen among {seen}"
    assert not [c for c in seen if secret in c], "the password is in a worker's command line"
    assert secret not in out + err
