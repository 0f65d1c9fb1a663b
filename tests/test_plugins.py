"""The plugin loader: decorator tags only, per-file reload, last good version kept, timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowd import handler
from flowd.plugins import PluginError, PluginLoader, load_dir

GOOD = """
from flowd import handler
LOADS = globals().setdefault("LOADS", 0) + 1

@handler("a", timeout=5, max_concurrent=2)
def a(task):
    return "{v}"
"""


def test_decorator__only_tags_the_function() -> None:
    @handler("x", priority=3)
    def x(task: object) -> None:
        return None

    assert x.__flowd_handler__ == (("x", {"priority": 3}),)  # type: ignore[attr-defined]


def test_decorator__refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        handler("x", max_retries=0)
    with pytest.raises(ValueError, match="bad task name"):
        handler("bad name")


def test_loader__reloads_only_changed_files(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(GOOD.format(v=1))
    (tmp_path / "b.py").write_text(GOOD.format(v=1).replace('"a"', '"b"'))
    loader = PluginLoader(tmp_path)
    reg, changes = loader.load()
    assert reg.names() == ["a", "b"] and len(changes) == 2
    assert reg.get("a").options == {"timeout": 5.0, "max_concurrent": 2}  # type: ignore[union-attr]
    assert loader.load()[1] == [], "nothing changed, nothing re-imported"
    (tmp_path / "a.py").write_text(GOOD.format(v=2))
    reg2, changes = loader.load()
    assert changes == [f"reloaded a.py @{reg2.get('a').version}"]  # type: ignore[union-attr]
    assert reg2.get("a").fn(None) == "2" and reg2.get("b") is reg.get("b")  # type: ignore[union-attr]


def test_loader__broken_file_keeps_previous_version_and_reports_line(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(GOOD.format(v=1))
    loader = PluginLoader(tmp_path)
    loader.load()
    (tmp_path / "a.py").write_text("x = 1\nraise RuntimeError('nope')\n")
    reg, changes = loader.load()
    assert reg.get("a").fn(None) == "1"  # type: ignore[union-attr]
    assert "a.py:2: RuntimeError: nope" in reg.errors[str(tmp_path / "a.py")]
    assert changes == ["failed a.py (the previous version stays)"]
    assert list(loader.new_errors) == [str(tmp_path / "a.py")]


def test_loader__a_failed_import_keeps_its_traceback_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text("def helper():\n    raise RuntimeError('deep')\n\nhelper()\n")
    loader = PluginLoader(tmp_path, import_timeout=None)
    loader.load()
    tb = loader.traceback_of(str(path))
    assert tb is not None and tb.startswith("Traceback (most recent call last):")
    assert "in helper" in tb and "RuntimeError: deep" in tb, tb
    path.write_text(GOOD.format(v=1))
    loader.load()
    assert loader.traceback_of(str(path)) is None


def test_loader__a_broken_version_is_reported_once_and_not_retried(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("raise RuntimeError('nope')\n")
    loader = PluginLoader(tmp_path)
    assert loader.load()[1] == ["failed a.py"] and loader.new_errors
    (tmp_path / "b.py").write_text(GOOD.format(v=1).replace('"a"', '"b"'))
    reg, changes = loader.load()
    assert changes == [f"loaded b.py @{reg.get('b').version}"], "a.py is not imported again"  # type: ignore[union-attr]
    assert loader.new_errors == {} and str(tmp_path / "a.py") in reg.errors, "still broken, not re-logged"
    (tmp_path / "a.py").write_text(GOOD.format(v=3))
    reg, _ = loader.load()
    assert reg.get("a").fn(None) == "3" and reg.errors == {}  # type: ignore[union-attr]


def test_loader__deleted_file_drops_its_handlers(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(GOOD.format(v=1))
    loader = PluginLoader(tmp_path)
    loader.load()
    (tmp_path / "a.py").unlink()
    reg, changes = loader.load()
    assert reg.names() == [] and changes == ["removed a.py"]


def test_loader__blocking_import_is_cut_off(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(30)\n")
    (tmp_path / "a.py").write_text(GOOD.format(v=1))
    reg, _ = PluginLoader(tmp_path, import_timeout=0.3).load()
    assert reg.names() == ["a"]
    assert "did not finish within 0.3s" in reg.errors[str(tmp_path / "slow.py")]


def test_loader__duplicate_names_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(GOOD.format(v=1))
    (tmp_path / "b.py").write_text(GOOD.format(v=2))
    reg = load_dir(tmp_path)
    assert "already declared" in reg.errors[str(tmp_path / "b.py")]


def test_missing_directory__is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        load_dir(tmp_path / "nope")
