"""`SubTasks` refuses a malformed return value with a message that says what it wants."""

from __future__ import annotations

import pytest

from flowd import SubTasks


@pytest.mark.parametrize(
    ("defs", "message"),
    [
        (["resize"], "child 0 must be a mapping with a 'name', not str"),
        ([{"name": "a"}, 3], "child 1 must be a mapping with a 'name', not int"),
        ({"name": "resize"}, "a list of child definitions"),
        ("resize", "a list of child definitions"),
    ],
)
def test_malformed_defs__raise_a_clear_type_error(defs: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        SubTasks(defs)  # type: ignore[arg-type]


def test_context__must_be_bytes() -> None:
    with pytest.raises(TypeError, match="bytes or None"):
        SubTasks([], context="text")  # type: ignore[arg-type]
    st = SubTasks([{"name": "a", "payload": {"x": 1}}], context=bytearray(b"c"))
    assert st.defs == [{"name": "a", "payload": {"x": 1}}] and st.context == b"c"
