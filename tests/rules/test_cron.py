"""Cron: 5 or 6 fields (seconds first), evaluated in a zone, stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowd.rules.cron import CronError, next_fire, validate, zone


@pytest.mark.parametrize(
    "expr", ["61 * * * *", "not a cron", "* * * *", "* * * * * * *", "*/0 * * * *", "", "0 0 30 2 *", "0 0 0 31 4 *"]
)
def test_validate__refuses_bad_expressions(expr: str) -> None:
    with pytest.raises(CronError):
        validate(expr)


def test_validate__accepts_a_date_that_exists_only_in_leap_years() -> None:
    assert validate("0 0 29 2 *") == "0 0 29 2 *"


def test_six_fields__seconds_come_first() -> None:
    now = datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert next_fire("*/10 * * * * *", "UTC", now) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)


def test_next_fire__is_strictly_after_now() -> None:
    now = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert next_fire("*/10 * * * * *", "UTC", now) == datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC)


def test_zone__2am_where_the_schedule_was_made_across_dst() -> None:
    # Paris is UTC+1 in winter and UTC+2 in summer: 02:00 local moves in UTC
    winter = next_fire("0 2 * * *", "Europe/Paris", datetime(2026, 1, 10, 12, tzinfo=UTC))
    summer = next_fire("0 2 * * *", "Europe/Paris", datetime(2026, 7, 10, 12, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (1, 0)
    assert winter.tzinfo is UTC


def test_missed_runs__collapse_into_the_next_one() -> None:
    long_after = datetime(2026, 1, 1, 5, 30, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", "UTC", long_after) == datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


def test_unknown_zone__is_refused() -> None:
    with pytest.raises(CronError):
        zone("Mars/Olympus")


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)))
def test_next_fire__every_minute_is_within_a_minute(now: datetime) -> None:
    nxt = next_fire("* * * * *", "UTC", now)
    assert 0 < (nxt - now).total_seconds() <= 60
    assert nxt.second == 0
