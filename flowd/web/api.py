"""The HTTP API under /api/: the CLI's --json documents, and task actions behind the Bearer token."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flowd.errors import BadInput
from flowd.rules.shapes import handler_json, page_json, task_json, worker_json
from flowd.web import params

if TYPE_CHECKING:
    from flowd.manager import TaskManager

ACTIONS = ("pause", "resume", "cancel", "retry")


class FlowdJSON(JSONResponse):
    """JSON as the CLI prints it with --json (non-JSON values as strings, UTF-8 kept)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, ensure_ascii=False).encode("utf-8")


def _json(doc: Any, status: int = 200) -> Response:
    return FlowdJSON(doc, status)


def manager(request: Request) -> TaskManager:
    m: TaskManager = request.app.state.manager
    return m


def _page_args(request: Request, default: int = 100) -> tuple[int, int]:
    return params.page(request.query_params, default)


def tasks(request: Request) -> Response:
    """`flowd list --json`: `?status=&name=&type=&tag=&label=K=V&parent=&root=&worker=&limit=&offset=`."""
    limit, offset = _page_args(request)
    page = manager(request).query_tasks(limit=limit, offset=offset, **params.task_filters(request.query_params))
    return _json(page_json(page, task_json))


def task(request: Request) -> Response:
    return _json(task_json(manager(request).get_task(request.path_params["task_id"])))


def task_audit(request: Request) -> Response:
    """`flowd audit task --json` (`?event_type=&attempt=&stage=&worker=&limit=&offset=&order=`)."""
    q = request.query_params
    limit, offset = _page_args(request, 1000)
    doc = manager(request).task_audit(
        request.path_params["task_id"],
        event_types=q.getlist("event_type") or None,
        attempt=params.integer(q, "attempt"),
        stage=params.integer(q, "stage"),
        worker_id=q.get("worker") or None,
        limit=limit,
        offset=offset,
        order=q.get("order", "asc"),
    )
    return _json(doc)


def workflow(request: Request) -> Response:
    limit, offset = _page_args(request, 10000)
    return _json(manager(request).workflow_audit(request.path_params["root_id"], limit, offset))


def workflow_summary(request: Request) -> Response:
    return _json(manager(request).workflow_summary(request.path_params["root_id"]))


def workers(request: Request) -> Response:
    limit, offset = _page_args(request)
    page = manager(request).workers(request.query_params.get("status") or None, limit, offset)
    return _json(page_json(page, worker_json))


def stats(request: Request) -> Response:
    q = request.query_params
    return _json({"items": manager(request).stats(q.get("tag") or None, q.get("by_label") or None)})


def handlers(request: Request) -> Response:
    items = [handler_json(h) for h in manager(request).fleet_handlers(request.query_params.get("name") or None)]
    return _json({"items": items, "total": len(items)})


def constraints(request: Request) -> Response:
    return _json(manager(request).constraints())


def entity(request: Request) -> Response:
    limit, _ = _page_args(request)
    p = request.path_params
    return _json(manager(request).entity(p["entity_type"], p["entity_id"], limit))


def overview(request: Request) -> Response:
    return _json(manager(request).overview())


def healthz(request: Request) -> Response:
    return _json({"ok": True})


def refuse_without_token(request: Request) -> Response | None:
    """Actions need `Authorization: Bearer TOKEN`: None when it is there, else the refusal."""
    guard = request.app.state.guard
    if guard.token is None:
        return _json({"error": "actions are disabled: start flowd web with --token (or FLOWD_WEB_TOKEN)"}, 403)
    if not guard.bearer_ok(request.headers.get("authorization")):
        return _json({"error": "this action needs the token: send Authorization: Bearer TOKEN"}, 401)
    return None


async def _reason(request: Request) -> str | None:
    """The reason of an action: `?reason=`, or `{"reason": "..."}` as the JSON body."""
    reason = request.query_params.get("reason")
    body = await request.body()
    if body.strip():
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as e:
            raise BadInput(f'the body is not valid JSON ({e.msg}): send {{"reason": "..."}} or nothing') from e
        if not isinstance(doc, dict) or not isinstance(doc.get("reason", ""), str | None):
            raise BadInput('the body must be a JSON object like {"reason": "..."}')
        reason = doc.get("reason") or reason
    return reason or None


async def act(request: Request) -> Response:
    """POST /api/tasks/{id}/pause|resume|cancel|retry: the task after the change (409: refused)."""
    refused = refuse_without_token(request)
    if refused is not None:
        return refused
    verb = request.path_params["verb"]
    if verb not in ACTIONS:
        return _json({"error": f"unknown action {verb!r}: use one of {', '.join(ACTIONS)}"}, 404)
    reason = await _reason(request)
    m = manager(request)
    t = await run_in_threadpool(getattr(m, f"{verb}_task"), request.path_params["task_id"], reason)
    return _json(task_json(t))


async def delete(request: Request) -> Response:
    """DELETE /api/tasks/{id}: the task with its events and attempts, `{"deleted": 1}`."""
    refused = refuse_without_token(request)
    if refused is not None:
        return refused
    n = await run_in_threadpool(manager(request).delete_task, request.path_params["task_id"])
    return _json({"deleted": n})


def routes() -> list[Route]:
    return [
        Route("/api/tasks", tasks),
        Route("/api/tasks/{task_id:int}", task, methods=["GET"]),
        Route("/api/tasks/{task_id:int}", delete, methods=["DELETE"]),
        Route("/api/tasks/{task_id:int}/audit", task_audit),
        Route("/api/tasks/{task_id:int}/{verb}", act, methods=["POST"]),
        Route("/api/workflows/{root_id:int}", workflow),
        Route("/api/workflows/{root_id:int}/summary", workflow_summary),
        Route("/api/workers", workers),
        Route("/api/stats", stats),
        Route("/api/handlers", handlers),
        Route("/api/constraints", constraints),
        Route("/api/entities/{entity_type}/{entity_id}", entity),
        Route("/api/overview", overview),
    ]
