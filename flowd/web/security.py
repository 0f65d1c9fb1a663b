"""Who may read and act: the token, the session cookie set by the login form, CSRF tokens.

The token itself is never stored in the cookie: a session is a random nonce signed with a
key made when the process starts (restarting `flowd web` logs everyone out), and a page's
CSRF token is derived from its session, so no state is kept on the server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

SESSION_COOKIE = "flowd_session"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class Guard:
    """The dashboard's access rules: `token` is None when actions are disabled; `public` when
    the server listens beyond loopback, so reading needs the token too."""

    def __init__(self, token: str | None, *, public: bool) -> None:
        self.token = token
        self.public = public
        self._key = secrets.token_bytes(32)

    def _sign(self, purpose: str, nonce: str) -> str:
        return hmac.new(self._key, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()

    def token_ok(self, given: str | None) -> bool:
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        """`Authorization: Bearer TOKEN` carries the token."""
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def new_session(self) -> str:
        """A cookie value for a person who has just given the token."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, cookie: str | None) -> str | None:
        """The session's nonce when the cookie is one this process signed, else None."""
        if self.token is None or not cookie:
            return None
        nonce, _, mac = cookie.partition(".")
        if not nonce or not hmac.compare_digest(mac.encode(), self._sign("session", nonce).encode()):
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        """The CSRF token of the forms served to one session."""
        return self._sign("csrf", nonce)

    def csrf_ok(self, nonce: str | None, given: str | None) -> bool:
        return bool(nonce and given) and hmac.compare_digest(str(given).encode(), self.csrf(str(nonce)).encode())
