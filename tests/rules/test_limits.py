"""The documented ranges (flowd.limits): every duration, count, priority, id and text is
bounded at the one place options are checked, whatever the way in."""

from __future__ import annotations

from typing import Any

import pytest

from flowd import handler
from flowd.limits import MAX_ID, MAX_SECONDS, PRIORITY_MAX, PRIORITY_MIN
from flowd.rules import options as opt
from flowd.rules.constraints import constraint
from flowd.rules.cron import CronError, validate, zone
from flowd.rules.options import InvalidInput

TOO_LONG = [1e300, 3e11, MAX_SECONDS + 1, float("inf"), float("nan")]


@pytest.mark.parametrize("key", ["timeout", "retry_interval"])
@pytest.mark.parametrize("value", TOO_LONG)
def test_durations__past_ten_years_or_not_finite_are_refused(key: str, value: float) -> None:
    with pytest.raises(InvalidInput, match=key):
        opt.check_options({key: value})


def test_durations__ten_years_is_the_last_accepted_value() -> None:
    assert opt.check_options({"timeout": MAX_SECONDS, "retry_interval": MAX_SECONDS}) == {
        "timeout": MAX_SECONDS,
        "retry_interval": MAX_SECONDS,
    }
    assert opt.check_delay(MAX_SECONDS) == MAX_SECONDS
    for value in TOO_LONG:
        with pytest.raises(InvalidInput, match="delay"):
            opt.check_delay(value)
        with pytest.raises(InvalidInput, match="debounce"):
            opt.check_delay(value, "debounce")


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("priority", [PRIORITY_MIN, 0, PRIORITY_MAX], [PRIORITY_MIN - 1, PRIORITY_MAX + 1, 99999999999]),
        ("max_retries", [1, 1_000_000], [0, 1_000_001, 99999999999999]),
        ("max_concurrent", [1, 1_000_000], [0, 1_000_001]),
    ],
)
def test_counts_and_priority__bounded(key: str, good: list[int], bad: list[int]) -> None:
    for v in good:
        assert opt.check_options({key: v}) == {key: v}
    for v in bad:
        with pytest.raises(InvalidInput, match=key):
            opt.check_options({key: v})


def test_handler_decorator__refuses_out_of_range_options() -> None:
    for kwargs in ({"timeout": 1e300}, {"retry_interval": 3e11}, {"priority": 2**31}, {"max_retries": 10**7}):
        with pytest.raises(InvalidInput):
            handler("h", **kwargs)  # type: ignore[arg-type]


def test_resolve__bounds_every_layer_even_a_published_handler_option() -> None:
    # what an older worker published in the fleet catalog reaches resolve() unchecked
    with pytest.raises(InvalidInput, match="timeout"):
        opt.resolve({}, {"timeout": 1e300}, {"timeout": 60, "max_retries": 3, "retry_interval": 0, "priority": 0})


def test_constraints__cooldown_and_max_concurrent_bounded() -> None:
    with pytest.raises(InvalidInput, match="cooldown"):
        constraint("g", "{payload[x]}", cooldown=1e300)
    with pytest.raises(InvalidInput, match="max_concurrent"):
        constraint("g", "{payload[x]}", max_concurrent=10**9)


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, 99999999999999999999999, True, "1"])
def test_ids__outside_64_bits_or_not_integers_are_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="task id"):
        opt.check_id(value)
    assert opt.check_id(MAX_ID) == MAX_ID


@pytest.mark.parametrize(
    ("value", "why"),
    [("x" * 256, "256 characters"), ("a\x00b", "NUL"), ("\udcff", "not valid Unicode"), (5, "must be a string")],
)
def test_text__length_nul_and_surrogates_refused_without_echo(value: Any, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as e:
        opt.check_text("tag", value)
    assert "xxxx" not in str(e.value)
    assert opt.check_text("tag", "é" * 255) == "é" * 255


def test_labels__keys_and_values_are_short_text() -> None:
    with pytest.raises(InvalidInput, match="label"):
        opt.check_labels({"k": "v" * 256})
    with pytest.raises(InvalidInput, match="label key"):
        opt.check_labels({"k" * 256: "v"})
    with pytest.raises(InvalidInput, match="Unicode"):
        opt.check_labels({"k": "\ud800"})


def test_payload__lone_surrogate_refused_a_valid_pair_accepted() -> None:
    with pytest.raises(InvalidInput, match="lone surrogate"):
        opt.payload_json({"a": "\ud800"})
    with pytest.raises(InvalidInput, match="lone surrogate"):
        opt.payload_json({"\udcff": 1})
    assert opt.payload_json({"a": "😀 \\ud800"}) == '{"a":"\\ud83d\\ude00 \\\\ud800"}'


def _nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: the object, then arrays inside it."""
    inner: Any = 1
    for _ in range(levels - 1):
        inner = [inner]
    return {"a": inner}


def test_payload__depth_limit_and_size_limit() -> None:
    assert opt.payload_json(_nested(100))
    with pytest.raises(InvalidInput, match="nested too deeply"):
        opt.payload_json(_nested(101))
    with pytest.raises(InvalidInput, match="nested too deeply"):
        opt.payload_json(_nested(100_000))  # past the interpreter's recursion limit too
    with pytest.raises(InvalidInput, match="over max_payload_bytes=10"):
        opt.payload_json({"a": "x" * 10}, max_bytes=10)
    assert opt.payload_json({"a": "x"}, max_bytes=9) == '{"a":"x"}'


def test_names__a_trailing_newline_is_not_a_name() -> None:
    with pytest.raises(InvalidInput):
        opt.check_name("echo\n")


def test_cron__expression_and_zone_lengths_bounded() -> None:
    with pytest.raises(CronError, match="255"):
        validate("* " * 200)
    with pytest.raises(CronError, match="64"):
        zone("Europe/" + "x" * 80)
