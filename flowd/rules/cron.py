"""Cron expressions: 5 fields, or 6 with seconds first, evaluated in a time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from flowd.clock import truncate

MAX_EXPR = 255  # the stored column's length
MAX_ZONE = 64


class CronError(ValueError):
    """A cron expression or time zone that cannot be used."""


def validate(expr: str) -> str:
    """Return the normalised expression or raise CronError saying what is wrong."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR:
        raise CronError(f"bad cron expression: use a string of at most {MAX_EXPR} characters")
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise CronError(
            f"bad cron expression {expr!r}: expected 5 fields (min hour day month weekday) or 6 with seconds first"
        )
    norm = " ".join(fields)
    if not croniter.is_valid(norm, second_at_beginning=len(fields) == 6):
        raise CronError(f"bad cron expression {expr!r}: a field is out of range or malformed")
    # well-formed but impossible (`0 0 30 2 *`: February has no 30th) is bad input too
    next_fire(norm, "UTC", datetime(2000, 1, 1, tzinfo=UTC))
    return norm


def zone(name: str | None) -> ZoneInfo | None:
    """The ZoneInfo for `name` (None → the system's local zone)."""
    if not name:
        return None
    if len(name) > MAX_ZONE:
        raise CronError(f"unknown time zone: IANA names are at most {MAX_ZONE} characters")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise CronError(f"unknown time zone {name!r}: use an IANA name such as Europe/Paris") from e


def next_fire(expr: str, tz: str | None, now: datetime) -> datetime:
    """The first occurrence strictly after `now`, evaluated in `tz`, returned in UTC.

    Missed occurrences collapse: the schedule restarts from `now`, not from the last run.
    """
    z = zone(tz)
    local = now.astimezone(z) if z is not None else now.astimezone()
    it = croniter(expr, local, second_at_beginning=len(expr.split()) == 6)
    try:
        nxt: datetime = it.get_next(datetime)
    except CroniterBadDateError as e:
        raise CronError(f"bad cron expression {expr!r}: it never fires (no such date)") from e
    return truncate(nxt.astimezone(UTC))


def local_zone_name() -> str | None:
    """The IANA name of this machine's zone ($TZ, else /etc/localtime), or None if unknown."""
    import os
    from pathlib import Path

    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            ZoneInfo(tz)
            return tz
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return None
    if "zoneinfo/" in target:
        name = target.split("zoneinfo/", 1)[1]
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            return None
    return None
