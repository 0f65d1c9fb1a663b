"""A dashboard over a fresh database of each backend, driven with Starlette's TestClient."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.e2e.conftest import Cli

TOKEN = "test-token-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1:8765"  # a local dashboard answers to a local Host only


Web = tuple[Any, Callable[..., TestClient]]


@pytest.fixture
def web(db_url: str, make_manager: Callable[..., Any]) -> Iterator[Web]:
    """(manager, client(token=..., public=...)): apps built over one manager on the test's database."""
    yield from _web(db_url, make_manager)


@pytest.fixture
def web_sqlite(sqlite_url: str, make_manager: Callable[..., Any]) -> Iterator[Web]:
    """`web` on SQLite only: for rules of the web layer that no database changes."""
    yield from _web(sqlite_url, make_manager)


def _web(db_url: str, make_manager: Callable[..., Any]) -> Iterator[Web]:
    from flowd.web.app import create_app

    m = make_manager(db_url)
    clients: list[TestClient] = []

    def client(token: str | None = TOKEN, public: bool = False, **kw: Any) -> TestClient:
        c = TestClient(create_app(m, token=token, public=public, **kw), base_url=BASE, follow_redirects=False)
        clients.append(c)
        return c

    yield m, client
    for c in clients:
        c.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """A flowd installation (SQLite, a plugin directory) for `flowd web` as a process."""
    c = Cli(tmp_path, f"sqlite:///{tmp_path / 'flowd.db'}")
    yield c
    c.close()
