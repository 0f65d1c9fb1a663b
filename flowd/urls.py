"""Database URLs as they may be shown or logged: every credential masked.

A URL can carry a secret in two places: the password of its user info
(`postgresql+psycopg://user:SECRET@host/db`) and its query string
(`…/db?password=SECRET`, `?sslpassword=…`, `?token=…`). `mask_url` replaces both with
`***`, on any text (it never fails, even on a URL SQLAlchemy cannot parse); `secrets_of`
lists those values so an error message that quotes one can be scrubbed with `scrub`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# query parameters whose value is a credential (matched as a substring of the lower-case
# name, so sslpassword, db_password, access_token, X-Api-Key... are covered)
SECRET_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
)

# the user info exactly as SQLAlchemy's URL parser reads it: the user stops at ':' or '/',
# the password runs to the first '@'
_USERINFO = re.compile(r"^(?P<head>[^:/?#\s]+://[^:/@]*:)(?P<password>[^@]*)(?P<at>@)")


def _is_secret(name: str) -> bool:
    low = unquote(name).strip().lower()
    return any(p in low for p in SECRET_PARAMS)


def _split_query(url: str) -> tuple[str, str | None]:
    """(everything before the query, the query) with SQLAlchemy's reading of the '?'."""
    m = _USERINFO.match(url)
    start = m.end() if m else 0  # a '?' inside the password does not start the query
    q = url.find("?", start)
    return (url, None) if q < 0 else (url[:q], url[q + 1 :])


def _params(query: str) -> list[str]:
    """The query's `name=value` parts and, between them, their separators (kept as they are)."""
    return re.split(r"([&;])", query)


def mask_url(url: str) -> str:
    """`url` with its password and every credential-bearing query value replaced by ***."""
    head, query = _split_query(url)
    head = _USERINFO.sub(lambda m: m["head"] + (MASK if m["password"] else "") + m["at"], head, count=1)
    if query is None:
        return head
    out: list[str] = []
    for part in _params(query):
        name, eq, _value = part.partition("=")
        out.append(f"{name}={MASK}" if eq and _is_secret(name) else part)
    return f"{head}?{''.join(out)}"


def secrets_of(url: str) -> list[str]:
    """The credential values in `url` (raw and URL-decoded), longest first."""
    found: set[str] = set()
    m = _USERINFO.match(url)
    if m and m["password"]:
        found.add(m["password"])
    _head, query = _split_query(url)
    for part in _params(query or ""):
        name, eq, value = part.partition("=")
        if eq and value and _is_secret(name):
            found.add(value)
    found |= {unquote(v) for v in found}
    return sorted((v for v in found if v), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an error message, say) with every credential of `url` replaced by ***."""
    for secret in secrets_of(url):
        text = text.replace(secret, MASK)
    return text
