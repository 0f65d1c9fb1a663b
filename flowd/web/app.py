"""The Starlette application: routes, the access rules, and one error boundary for pages and API."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from flowd.errors import BadInput, FlowdError, NotFound, TransitionRefused
from flowd.web import api, pages, stream
from flowd.web.api import FlowdJSON
from flowd.web.security import SESSION_COOKIE, Guard, is_loopback

if TYPE_CHECKING:
    from flowd.manager import TaskManager

HERE = Path(__file__).parent
# what anyone may fetch even where reading needs the token
OPEN_PATHS = ("/login", "/static/", "/healthz")


def authenticated(request: Request) -> bool:
    """The request carries the token: a Bearer header or a session cookie from the login form."""
    guard: Guard = request.app.state.guard
    if guard.bearer_ok(request.headers.get("authorization")):
        return True
    return guard.session(request.cookies.get(SESSION_COOKIE)) is not None


class ReadGate:
    """Off loopback, every read needs the token too: pages send people to the login form, the API
    answers 401. On loopback, only a local Host is served: a web page elsewhere cannot read the
    dashboard through a name that resolves to 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not self.guard.public:
            host = (request.url.hostname or "").lower()
            if not is_loopback(host):
                message = f"this dashboard answers on localhost only, not to Host {host!r}"
                await FlowdJSON({"error": message}, 400)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        if not authenticated(request):
            response: Response
            if scope["path"].startswith("/api/"):
                response = FlowdJSON({"error": "this dashboard needs the token: send Authorization: Bearer TOKEN"}, 401)
            else:
                response = RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _status(e: Exception) -> int:
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, BadInput):
        return 400
    if isinstance(e, TransitionRefused):
        return 409
    return 503  # the database is unreachable, or another failure of the back end


async def _flowd_error(request: Request, exc: Exception) -> Response:
    code = _status(exc)
    message = str(exc).replace("\n", " ")
    if request.url.path.startswith("/api/"):
        return FlowdJSON({"error": message}, code)
    return pages.error_page(request, message, code)


def create_app(
    manager: TaskManager,
    *,
    token: str | None = None,
    public: bool = False,
    stream_interval: float = 0.5,
    stop: threading.Event | None = None,
) -> Starlette:
    """The dashboard over `manager`. `public`: it listens beyond loopback, so reads need `token`
    too. `stop` ends every open event stream (set it on shutdown); `stream_interval` is how often
    a stream looks for new events (seconds)."""
    if public and token is None:
        raise BadInput("a dashboard reachable from other machines needs a token: pass --token or set FLOWD_WEB_TOKEN")
    routes = [
        Route("/", pages.overview),
        Route("/tasks", pages.task_list),
        Route("/tasks/{task_id:int}", pages.task_page),
        Route("/tasks/{task_id:int}/action", pages.task_action, methods=["POST"]),
        Route("/workflows/{root_id:int}", pages.workflow_page),
        Route("/workers", pages.workers_page),
        Route("/handlers", pages.handlers_page),
        Route("/cron", pages.cron_page),
        Route("/constraints", pages.constraints_page),
        Route("/entities/{entity_type}/{entity_id}", pages.entity_page),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/healthz", api.healthz),
        *api.routes(),
        Route("/api/events/stream", stream.events_stream),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={FlowdError: _flowd_error, 404: pages.not_found})
    guard = Guard(token, public=public)
    app.state.manager = manager
    app.state.guard = guard
    app.state.templates = pages.templates()
    app.state.stop = stop or threading.Event()
    app.state.stream_interval = stream_interval
    app.add_middleware(ReadGate, guard=guard)
    return app
