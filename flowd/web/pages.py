"""The HTML pages: server-rendered Jinja2 (autoescaped), live through /api/events/stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from flowd.errors import BadInput, FlowdError, NotFound
from flowd.rules.shapes import handler_json, page_json, task_json, worker_json
from flowd.web import api, params, views
from flowd.web.api import manager
from flowd.web.security import SESSION_COOKIE, Guard

PAGE_SIZE = 50
FLOWS_SHOWN = 50  # flows of one workflow whose join the tree marks
TREE_SHOWN = 2000  # tasks drawn in a workflow's tree (the summary still counts every one)
STATUSES = ("pending", "running", "suspended", "paused", "failed", "timeout", "completed", "permanently_failed")
# which actions a task of each status offers (the rules of flowd pause/resume/cancel; retry = resume of a failure)
OFFERED = {
    "pending": ("pause", "cancel"),
    "running": ("pause",),
    "paused": ("resume", "cancel"),
    "suspended": ("resume", "cancel"),
    "failed": ("retry", "pause", "cancel"),
    "timeout": ("retry", "pause", "cancel"),
    "permanently_failed": ("retry",),
    "completed": (),
}


def _time(value: str | None) -> Markup:
    """An ISO timestamp as a <time> element; the page's script shows it in the reader's zone."""
    if not value:
        return Markup("-")
    return Markup('<time datetime="{0}">{0}</time>').format(value)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.3f}s" if value < 10 else f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _compact(value: Any) -> str:
    if value is None or value == {}:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _clip(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # task names, payloads, errors and labels may hold HTML
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(time=_time, secs=_secs, pretty=_pretty, compact=_compact, first_line=_first_line, clip=_clip)
    return Jinja2Templates(env=env)


def _session(request: Request) -> str | None:
    guard: Guard = request.app.state.guard
    return guard.session(request.cookies.get(SESSION_COOKIE))


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    guard: Guard = request.app.state.guard
    nonce = _session(request)
    m = manager(request)
    base = {
        "nav": request.url.path,
        "actions_enabled": guard.token is not None,
        "logged_in": nonce is not None,
        "csrf": guard.csrf(nonce) if nonce else "",
        "db": m.db.display_url,  # the password masked
        "stream": None,
        "message": request.query_params.get("msg"),
        "error": request.query_params.get("error"),
        "offered": OFFERED,
    }
    tpl: Jinja2Templates = request.app.state.templates
    return tpl.TemplateResponse(request, name, {**base, **context}, status_code=status)


def error_page(request: Request, message: str, status: int) -> Response:
    return render(request, "error.html", status, title=f"error {status}", problem=message)


async def not_found(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    detail = "no such page" if exc.status_code == 404 else str(exc.detail)
    if request.url.path.startswith("/api/"):
        return api.FlowdJSON({"error": detail}, exc.status_code)
    return await run_in_threadpool(error_page, request, detail, exc.status_code)


def overview(request: Request) -> Response:
    doc = manager(request).overview()
    top = max([1, *(c + f for c, f in zip(doc["throughput"]["completed"], doc["throughput"]["failed"], strict=True))])
    return render(
        request,
        "overview.html",
        title="overview",
        doc=doc,
        top=top,
        statuses=STATUSES,
        stream="/api/events/stream?latest=1",
    )


def task_list(request: Request) -> Response:
    q = request.query_params
    filters = params.task_filters(q)
    limit, offset = params.page(q, PAGE_SIZE)
    page = page_json(manager(request).query_tasks(limit=limit, offset=offset, **filters), task_json)
    kept = [(k, v) for k, v in q.multi_items() if k in params.TASK_FILTERS and v]

    def link(new_offset: int) -> str:
        return "/tasks?" + urlencode([*kept, ("limit", str(limit)), ("offset", str(max(0, new_offset)))])

    return render(
        request,
        "tasks.html",
        title="tasks",
        page=page,
        q=q,
        statuses=STATUSES,
        here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        prev=link(offset - limit) if offset > 0 else None,
        next=link(offset + limit) if page["has_more"] else None,
        stream="/api/events/stream?latest=1",
    )


def _steps(request: Request, name: str) -> dict[str, float] | None:
    """The steps the fleet's workers publish for a handler (none: no live worker declares any)."""
    for h in manager(request).fleet_handlers(name):
        steps = h.options.get("steps")
        if steps:
            return dict(steps)
    return None


def task_page(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    # newest activity first: a long-running task's page stays short
    doc = manager(request).task_audit(task_id, limit=200, order="desc")
    t = doc["task"]
    return render(
        request,
        "task.html",
        title=f"task {t['id']} {t['name']}",
        t=t,
        events=doc["events"],
        attempts=doc["attempts"],
        steps=_steps(request, t["name"]),
        stream=f"/api/events/stream?latest=1&task={t['id']}",
    )


def workflow_page(request: Request) -> Response:
    m = manager(request)
    root, nodes, attempts = m.workflow_tree(request.path_params["root_id"])
    summary = m.workflow_summary(root.id)
    now = datetime.now(UTC)
    # each flow of the workflow names its join task (a few flows at most, one read each)
    joins: dict[int, int] = {}
    for flow_id in sorted({n.flow_id for n in nodes if n.flow_id is not None})[:FLOWS_SHOWN]:
        try:
            join = m.get_flow(flow_id)["join_task_id"]
        except NotFound:
            continue  # deleted since the tree was read
        if join is not None:
            joins[join] = flow_id
    rows = views.tree_rows(root, nodes, attempts, joins)
    return render(
        request,
        "workflow.html",
        title=f"workflow {root.id} {root.name}",
        root=task_json(root),
        rows=rows[:TREE_SHOWN],
        hidden_rows=max(0, len(rows) - TREE_SHOWN),
        summary=summary,
        gantt=views.gantt(root, nodes, attempts, now),
        stream=f"/api/events/stream?latest=1&root={root.id}",
    )


def workers_page(request: Request) -> Response:
    status = request.query_params.get("status") or None
    page = page_json(manager(request).workers(status, 200, 0), worker_json)
    return render(request, "workers.html", title="workers", page=page, stream="/api/events/stream?latest=1")


def handlers_page(request: Request) -> Response:
    items = [handler_json(h) for h in manager(request).fleet_handlers()]
    grouped: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for h in items:
        grouped.setdefault((h["name"], h["version"]), []).append(h)
    return render(request, "handlers.html", title="handlers", grouped=grouped)


def cron_page(request: Request) -> Response:
    page = page_json(manager(request).query_tasks(limit=500, offset=0, order="asc", type="cron"), task_json)
    return render(request, "cron.html", title="cron", page=page, stream="/api/events/stream?latest=1")


def constraints_page(request: Request) -> Response:
    return render(request, "constraints.html", title="constraints", doc=manager(request).constraints())


def entity_page(request: Request) -> Response:
    p = request.path_params
    doc = manager(request).entity(p["entity_type"], p["entity_id"], 200)
    return render(request, "entity.html", title=f"entity {p['entity_type']}:{p['entity_id']}", doc=doc)


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login(request: Request) -> Response:
    guard: Guard = request.app.state.guard
    target = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return await run_in_threadpool(render, request, "login.html", 200, title="log in", target=target, failed=False)
    form = params.form(await request.body())
    target = _safe_next(form.get("next"))
    if not guard.token_ok(form.get("token")):
        return await run_in_threadpool(render, request, "login.html", 401, title="log in", target=target, failed=True)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        SESSION_COOKIE,
        guard.new_session(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _back(task_id: int, deleted: bool, target: str | None, **query: str) -> Response:
    """Back where the form was (a list's row), else to the task (or the list once it is deleted)."""
    where = _safe_next(target) if target else ("/tasks" if deleted else f"/tasks/{task_id}")
    path, _, old = where.partition("?")
    kept = [(k, v) for k, v in parse_qsl(old) if k not in ("msg", "error")]
    return RedirectResponse(f"{path}?{urlencode([*kept, *query.items()])}", 303)


async def task_action(request: Request) -> Response:
    """A page's action form: the session cookie and its CSRF token, then the CLI's rules."""
    guard: Guard = request.app.state.guard
    task_id: int = request.path_params["task_id"]
    form = params.form(await request.body())
    nonce = _session(request)
    if guard.token is None:
        problem = "actions are disabled: start flowd web with --token (or FLOWD_WEB_TOKEN)"
        return await run_in_threadpool(error_page, request, problem, 403)
    if nonce is None:
        return RedirectResponse(f"/login?next=/tasks/{task_id}", 303)
    if not guard.csrf_ok(nonce, form.get("csrf")):
        problem = "the form's CSRF token is missing or stale: reload the page and try again"
        return await run_in_threadpool(error_page, request, problem, 403)
    verb = form.get("action", "")
    reason = form.get("reason", "").strip() or None
    target = form.get("next")
    m = manager(request)
    try:
        if verb == "delete":
            await run_in_threadpool(m.delete_task, task_id)
            return _back(task_id, True, target, msg=f"task {task_id} deleted")
        if verb not in ("pause", "resume", "cancel", "retry"):
            raise BadInput(f"unknown action {verb!r}")
        t = await run_in_threadpool(getattr(m, f"{verb}_task"), task_id, reason)
    except FlowdError as e:
        # a refused transition: back to the task with its one-line reason
        return _back(task_id, False, target, error=str(e).replace("\n", " "))
    return _back(task_id, False, target, msg=f"task {t.id} {t.status.value}")
