"""Option and progress validation messages name the unit they expect."""

from __future__ import annotations

import pytest

from flowd.rules.options import InvalidInput, check_percent, check_steps


def test_check_percent__a_non_number_is_refused_as_a_percentage() -> None:
    with pytest.raises(InvalidInput, match="from 0 to 100") as e:
        check_percent("x")
    assert "seconds" not in str(e.value)
    assert check_percent(50) == 50.0


def test_check_steps__a_non_number_weight_is_not_called_seconds() -> None:
    with pytest.raises(InvalidInput) as e:
        check_steps({"build": "heavy"})
    assert "seconds" not in str(e.value)
