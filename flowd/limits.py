"""The documented range of every number and text flowd accepts (README, "Limits").

One set of bounds for every way in (CLI flags, settings, TOML, `@handler(...)`, the Python
API, SubTasks and flow steps), so a value that passes is one every database can store and
the worker can compute with: SQLite, PostgreSQL and MySQL give the same answer.
"""

from __future__ import annotations

MAX_SECONDS = 315_360_000.0
"""Longest duration anywhere (timeout, retry interval, delay, debounce, heartbeats, …): ten years."""

PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
"""A priority is a signed 32-bit integer (the column type on every database)."""

MAX_RETRIES = 1_000_000
"""`max_retries` counts total attempts: 1 to this."""

MAX_CONCURRENT = 1_000_000
"""Largest per-handler or per-constraint-key concurrency limit."""

MAX_ID = 2**63 - 1
"""Ids are signed 64-bit integers: a larger one cannot name a task, so it is bad input."""

MAX_TEXT = 255
"""Tag, key, label keys and values, entity ids, stage names: at most this many characters."""

MAX_JSON_DEPTH = 100
"""Deepest nesting of a payload or a result (objects and arrays)."""

MAX_BYTES = 1_073_741_824
"""Largest value of `max_payload_bytes` and `max_result_bytes` (1 GiB)."""

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
"""Default `max_payload_bytes` (1 MiB), like `max_result_bytes`."""
