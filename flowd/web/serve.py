"""Run the dashboard under uvicorn until SIGINT/SIGTERM, ending open event streams first."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn

from flowd.errors import BadInput, FlowdError
from flowd.web.app import create_app
from flowd.web.security import is_loopback

if TYPE_CHECKING:
    from flowd.manager import TaskManager


class _Server(uvicorn.Server):
    """uvicorn waits for every open response before it exits: an event stream never ends by
    itself, so the first signal also tells the streams to stop. The signal is handled, not
    raised again after the shutdown: `flowd web` exits 0, as `flowd worker` does."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event) -> None:
        super().__init__(config)
        self.stop = stop

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop.set()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def check_bind(host: str, token: str | None) -> bool:
    """True when `host` is reachable from other machines; refuses that without a token."""
    public = not is_loopback(host)
    if public and not token:
        raise BadInput(
            f"refusing to listen on {host} without a token: anyone who reaches it could read and change "
            "your tasks; pass --token (or set FLOWD_WEB_TOKEN), or keep --host 127.0.0.1"
        )
    return public


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so a busy port is one clear error (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise FlowdError(
            f"cannot listen on {host}:{port}: {e.strerror or e}: choose another --port, or stop what uses it"
        ) from e
    return sock


def serve(
    manager: TaskManager,
    host: str,
    port: int,
    token: str | None,
    *,
    announce: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the dashboard in the foreground; returns after SIGINT/SIGTERM, streams closed.

    `announce(url)` is told the address once the socket is bound.
    """
    public = check_bind(host, token)
    sock = listen(host, port)
    if announce is not None:
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        announce(f"http://{shown}:{sock.getsockname()[1]}/")
    stop = threading.Event()
    app = create_app(manager, token=token, public=public, stop=stop)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, stop)
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
        manager.close()
