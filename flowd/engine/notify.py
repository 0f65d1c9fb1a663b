"""The systemd notify protocol (sd_notify(3)), spoken directly over the socket.

systemd hands a `Type=notify` service the address of a datagram socket in
`$NOTIFY_SOCKET`; the service sends newline-separated `KEY=VALUE` assignments there:
`READY=1` once it serves, `STATUS=…` for `systemctl status`, `WATCHDOG=1` as a keep-alive
when `WatchdogSec=` is set, and `STOPPING=1` when it begins to shut down. Outside systemd
the variable is unset and every call is a cheap no-op, so the worker calls these
unconditionally. Notification is best effort: a failure is reported as `False`, never
raised, because the worker must not die for want of telling systemd about it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

# A send normally completes at once (PID 1 reads its socket eagerly); the bound only
# guards the worker against a stuck receiver.
_SEND_TIMEOUT: Final = 1.0


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _address(raw: str) -> str | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value, or None for one we cannot reach."""
    if raw.startswith("@"):
        # Linux abstract namespace: the name is the path with '@' read as a NUL byte.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # Other forms (e.g. systemd's "vsock:CID:PORT") are not used for services on a host.
    return None


def sd_notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `lines` as one datagram to $NOTIFY_SOCKET; True if it was sent."""
    raw = _environ(env).get("NOTIFY_SOCKET")
    if not raw or not lines:
        return False
    address = _address(raw)
    if address is None:
        return False
    payload = "\n".join(lines).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sent = sock.sendto(payload, address)
    except (OSError, ValueError):
        # ValueError: an address Python refuses to encode; same outcome as a missing socket.
        return False
    return sent == len(payload)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if no watchdog is set."""
    source = _environ(env)
    usec = source.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = source.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            # The watchdog belongs to another process (e.g. the variables leaked to a child).
            return None
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    # sd_watchdog_enabled(3) recommends pinging at half the timeout.
    return value / 2 / 1_000_000


def _one_line(text: str) -> str:
    # A newline would end the assignment and start a bogus one.
    return " ".join(text.splitlines())


class Notifier:
    """Tells systemd about the worker's lifecycle; every method is a no-op outside systemd.

    The environment is read once, at construction: when $NOTIFY_SOCKET is unset the
    methods return False without touching a socket. Each method returns whether the
    message was sent.
    """

    __slots__ = ("_env", "_watchdog_interval")

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        source = _environ(env)
        raw = source.get("NOTIFY_SOCKET")
        self._env: dict[str, str] | None = {"NOTIFY_SOCKET": raw} if raw else None
        self._watchdog_interval = watchdog_interval(source)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._env is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` calls, or None when systemd expects none."""
        return self._watchdog_interval

    def _send(self, *lines: str) -> bool:
        if self._env is None:
            return False
        return sd_notify(*lines, env=self._env)

    def ready(self, status: str = "") -> bool:
        """READY=1 (start-up is complete), with an optional STATUS line."""
        if status:
            return self._send("READY=1", f"STATUS={_one_line(status)}")
        return self._send("READY=1")

    def status(self, text: str) -> bool:
        """STATUS=text, shown by `systemctl status`."""
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self, status: str = "") -> bool:
        """WATCHDOG=1: the keep-alive systemd expects at least every WatchdogSec (+ optional STATUS)."""
        if status:
            return self._send("WATCHDOG=1", f"STATUS={_one_line(status)}")
        return self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown (the drain) has begun."""
        return self._send("STOPPING=1")
