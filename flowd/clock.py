"""Time in flowd: aware UTC datetimes truncated to milliseconds, ISO strings with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current time, UTC, truncated to whole milliseconds (the stored precision)."""
    return truncate(datetime.now(UTC))


def truncate(dt: datetime) -> datetime:
    """Drop sub-millisecond precision so what we compare equals what we stored."""
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


def after(now: datetime, seconds: float) -> datetime:
    """`now` plus a duration in seconds, at millisecond precision."""
    return truncate(now + timedelta(seconds=seconds))


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch (how timestamps are stored)."""
    return round(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Inverse of `to_ms`: an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a `Z`, the shape of every timestamp in JSON."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 string (a trailing `Z` allowed); naive values are taken as UTC."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """Duration in seconds, or None when either end is missing."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)
