"""GET /api/events/stream: the audit log as server-sent events, for the pages' live updates.

Each connection polls the events table by id (an index range past the last id it sent)
every `stream_interval` seconds in the thread pool, so an idle stream costs one indexed
query per interval and never holds a connection between polls. A reconnecting browser
sends `Last-Event-ID` and misses nothing. Streams end when the server stops (`app.state.stop`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from flowd.errors import BadInput
from flowd.rules.shapes import event_json
from flowd.web import params
from flowd.web.api import manager

BATCH = 500
KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies close silent connections)


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    return {
        "task_id": params.integer(q, "task"),
        "root_id": params.integer(q, "root"),
        "name": q.get("name") or None,
        "event_types": [t for t in q.getlist("event_type") if t] or None,
    }


def _start(request: Request, m: Any, filters: dict[str, Any]) -> int:
    """Where the stream starts: after `Last-Event-ID` or `?after=`, else after the newest event."""
    given = request.headers.get("last-event-id") or request.query_params.get("after")
    if given:
        try:
            return int(given)
        except ValueError:
            raise BadInput(f"after must be an event id, not {given!r}") from None
    newest = m.events(limit=1)
    return int(newest[-1].id) if newest else 0


async def events_stream(request: Request) -> Response:
    """`?task=&root=&name=&event_type=&after=`: each event as `id: N` and `data: {event JSON}`.

    `latest=1` sends only the newest event of each poll: what a page needs to know it should
    refresh, without shipping every event of a busy fleet to every open browser.
    """
    m = manager(request)
    filters = _filters(request)
    latest = request.query_params.get("latest") in ("1", "true")
    # bad filters answer 400 here, before the stream starts
    after = await run_in_threadpool(_start, request, m, filters)
    await run_in_threadpool(functools.partial(m.events, after_id=after, limit=1, **filters))
    stop = request.app.state.stop
    interval = float(request.app.state.stream_interval)

    async def events() -> AsyncIterator[str]:
        last = after
        quiet_since = time.monotonic()
        yield "retry: 2000\n\n"
        while not stop.is_set():
            batch = await run_in_threadpool(functools.partial(m.events, after_id=last, limit=BATCH, **filters))
            if batch:
                last = batch[-1].id
            for e in batch[-1:] if latest else batch:
                yield f"id: {e.id}\ndata: {json.dumps(event_json(e), default=str, ensure_ascii=False)}\n\n"
            if batch:
                quiet_since = time.monotonic()
                if len(batch) == BATCH:
                    continue  # a backlog: send it on without waiting
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await _wait(stop, interval)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _wait(stop: Any, seconds: float) -> None:
    """Sleep `seconds`, waking early (within 0.1 s) when the server stops."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await anyio.sleep(min(left, 0.1))
