"""`flowd submit` / `flowd cron` backoff options, and `--wait` refused without a worker's help."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Run = Callable[..., Any]


def test_submit__takes_the_backoff_options(flowd: Run) -> None:
    r = flowd(
        "submit",
        "echo",
        "{}",
        "--retry-backoff",
        "exponential",
        "--retry-max-interval",
        "60",
        "--retry-jitter",
        "--json",
    )
    assert r.code == 0, r.err
    t = r.json()
    assert (t["retry_backoff"], t["retry_max_interval"], t["retry_jitter"]) == ("exponential", 60.0, True)
    t = flowd("submit", "echo", "{}", "--json").json()
    assert (t["retry_backoff"], t["retry_max_interval"], t["retry_jitter"]) == ("fixed", 3600.0, False)
    t = flowd("cron", "echo", "0 7 * * *", "--retry-backoff", "exponential", "--json").json()
    assert t["retry_backoff"] == "exponential"


def test_submit__bad_backoff_is_exit_2_and_writes_nothing(flowd: Run) -> None:
    for args in (["--retry-backoff", "linear"], ["--retry-max-interval", "-1"], ["--wait-timeout", "5"]):
        r = flowd("submit", "echo", "{}", *args)
        assert r.code == 2 and r.err.count("\n") == 1, (args, r.err)
    assert flowd("list", "--json").json()["total"] == 0


def test_submit_wait__timeout_says_the_status_and_exits_1(flowd: Run) -> None:
    r = flowd("submit", "echo", "{}", "--wait", "--wait-timeout", "0.2")  # no worker runs
    assert r.code == 1 and "is still pending after 0.2s" in r.err and r.out == ""
