"""The HTML pages: every page renders, user data is escaped, actions need login and a CSRF token."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.web.conftest import TOKEN, csrf_of

HOSTILE = "<script>alert('x')</script>"


def _workflow(m: Any) -> tuple[int, int]:
    """A root with one child, written through the manager's worker so attempts and events exist."""
    from flowd import SubTasks

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return SubTasks([{"name": "child", "payload": {"html": HOSTILE}}])
        return {"done": True}

    def child(task: Any) -> Any:
        task.progress(HOSTILE, stage_name="s1", percent=50)
        raise ValueError(HOSTILE)

    m.use({"parent": parent, "child": {"handler": child, "options": {"max_retries": 1}}})
    root = m.submit("parent", {"p": HOSTILE}, tag=HOSTILE, labels={"k": HOSTILE})
    worker = m.make_worker()
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while m.get_task(root).status.value != "completed":
            assert time.monotonic() < deadline, "the workflow did not finish"
            worker.run_once()
    finally:
        worker.close()
    child_id = m.query_tasks(parent_id=root).items[0].id
    return root, child_id


def test_pages__every_page_renders_and_escapes_user_data(web: Any) -> None:
    m, client = web
    root, child = _workflow(m)
    m.cron("parent", "*/10 * * * * *", {"c": HOSTILE}, tz="UTC")
    c = client()
    for path in (
        "/",
        "/tasks",
        f"/tasks?status=completed&name=parent&tag={HOSTILE}&label=k={HOSTILE}&root={root}",
        f"/tasks/{root}",
        f"/tasks/{child}",
        f"/workflows/{root}",
        f"/workflows/{child}",
        "/workers",
        "/handlers",
        "/cron",
        "/constraints",
        "/entities/user/<img src=x onerror=alert(1)>",
        "/login",
    ):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "text/html" in r.headers["content-type"]
        assert HOSTILE not in r.text and "<img src=x" not in r.text, path
    page = c.get(f"/tasks/{child}").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # the error, payload and progress, escaped
    assert 'class="attempt"' in page and "ValueError" in page
    tree = c.get(f"/workflows/{root}").text
    assert f'data-task="{root}"' in tree and f'data-task="{child}"' in tree
    assert "g-bar o-completed" in tree and "g-bar o-failed" in tree  # the Gantt bars of both attempts
    listing = c.get(f"/tasks?root={root}").text
    assert f'href="/tasks/{child}"' in listing
    assert c.get("/tasks?status=completed").text.count('href="/tasks/') >= 1


def _run_until(m: Any, done: Any) -> None:
    worker = m.make_worker()
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, "the tasks did not finish"
            worker.run_once()
    finally:
        worker.close()


def test_pages__the_workflow_tree_marks_flow_steps_and_the_join(web: Any) -> None:
    m, client = web

    def starter(task: Any) -> Any:
        return {"flow": task.start_flow([{"name": "step"}, {"name": "step"}], {"name": "join"})}

    m.use({"starter": starter, "step": lambda task: 1, "join": lambda task: 2})
    root = m.submit("starter", {})
    _run_until(m, lambda: m.query_tasks(name="join", status="completed").total == 1)
    flow = m.get_task(root).result["flow"]
    steps = [t.id for t in m.query_tasks(name="step", order="asc").items]
    join = m.query_tasks(name="join").items[0].id
    tree = client().get(f"/workflows/{root}").text
    for i, tid in enumerate(steps):
        assert f'href="/tasks/{tid}">step #{tid}</a>' in tree
        assert f'<span class="flow">flow {flow} step {i}</span>' in tree
    assert f'href="/tasks/{join}">join #{join}</a>' in tree and f"flow {flow} join" in tree


def test_pages__the_list_offers_each_row_s_actions_and_comes_back(web: Any) -> None:
    m, client = web
    pending = m.submit("echo", {}, allow_unknown=True)
    paused = m.submit("echo", {}, allow_unknown=True)
    m.pause_task(paused)
    c = client()
    assert 'data-action="pause"' not in c.get("/tasks").text  # not logged in: no buttons
    c.post("/login", data={"token": TOKEN, "next": "/"})
    listing = c.get("/tasks?name=echo").text
    rows = {tid: listing.split(f'action="/tasks/{tid}/action"', 1)[1][:400] for tid in (pending, paused)}
    assert 'value="pause"' in rows[pending] and 'value="resume"' in rows[paused]
    assert 'name="next" value="/tasks?name=echo"' in listing
    r = c.post(
        f"/tasks/{pending}/action", data={"action": "cancel", "csrf": csrf_of(listing), "next": "/tasks?name=echo"}
    )
    assert r.status_code == 303 and r.headers["location"] == f"/tasks?name=echo&msg=task+{pending}+permanently_failed"
    assert m.get_task(pending).status.value == "permanently_failed"


def test_pages__errors_are_one_line_pages(web_sqlite: Any) -> None:
    _m, client = web_sqlite
    c = client()
    r = c.get("/tasks/424242")
    assert r.status_code == 404 and "task 424242 not found" in r.text
    r = c.get("/tasks?status=<b>bogus</b>")
    assert r.status_code == 400 and "<b>bogus" not in r.text and "&lt;b&gt;bogus" in r.text
    assert c.get("/no/such/page").status_code == 404


def test_pages__paging_links_keep_the_filters(web: Any) -> None:
    m, client = web
    ids = [m.submit("echo", {}, allow_unknown=True, tag="p") for _ in range(5)]
    m.submit("echo", {}, allow_unknown=True, tag="other")
    c = client()
    first = c.get("/tasks?tag=p&limit=2").text
    assert f'href="/tasks/{ids[4]}"' in first and f'href="/tasks/{ids[2]}"' not in first
    assert 'href="/tasks?tag=p&amp;limit=2&amp;offset=2"' in first
    second = c.get("/tasks?tag=p&limit=2&offset=2").text
    assert f'href="/tasks/{ids[2]}"' in second and 'offset=0"' in second


def test_pages__actions_need_login_and_the_csrf_token(web: Any) -> None:
    m, client = web
    tid = m.submit("echo", {}, allow_unknown=True)
    c = client()
    page = c.get(f"/tasks/{tid}").text
    assert "Log in" in page and 'data-action="pause"' not in page
    # not logged in: sent to the login form, nothing changes
    r = c.post(f"/tasks/{tid}/action", data={"action": "pause", "csrf": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert m.get_task(tid).status.value == "pending"

    bad = c.post("/login", data={"token": "not-the-token", "next": "/"})
    assert (
        bad.status_code == 401
        and "not the token" in bad.text
        and "flowd_session" not in bad.headers.get("set-cookie", "")
    )
    r = c.post("/login", data={"token": TOKEN, "next": f"/tasks/{tid}"})
    assert r.status_code == 303 and r.headers["location"] == f"/tasks/{tid}"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() not in cookie

    page = c.get(f"/tasks/{tid}").text
    assert 'data-action="pause"' in page and 'data-action="cancel"' in page and 'data-action="resume"' not in page
    # a forged form (no or a wrong CSRF token) is refused
    for forged in ({"action": "pause"}, {"action": "pause", "csrf": "0" * 64}):
        r = c.post(f"/tasks/{tid}/action", data=forged)
        assert r.status_code == 403 and "CSRF" in r.text
    assert m.get_task(tid).status.value == "pending"

    token = csrf_of(page)
    r = c.post(f"/tasks/{tid}/action", data={"action": "pause", "csrf": token})
    assert r.status_code == 303 and m.get_task(tid).status.value == "paused"
    shown = c.get(r.headers["location"]).text
    assert f"task {tid} paused" in shown
    # a refused transition comes back with its one-line reason
    r = c.post(f"/tasks/{tid}/action", data={"action": "pause", "csrf": token})
    assert f"cannot pause task {tid}: it is paused" in c.get(r.headers["location"]).text
    r = c.post(f"/tasks/{tid}/action", data={"action": "resume", "reason": "looked at it", "csrf": token})
    assert m.get_task(tid).status.value == "pending"
    assert m.task_audit(tid)["events"]["items"][-1]["metadata"]["resume_reason"] == "looked at it"
    r = c.post(f"/tasks/{tid}/action", data={"action": "delete", "csrf": token})
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks?")
    assert m.query_tasks().total == 0

    # the session belongs to this process: another dashboard (a restart) does not accept it
    other = client()
    other.cookies.update(c.cookies)
    assert 'data-action="pause"' not in other.get("/tasks").text
    # logging out drops the cookie
    r = c.post("/logout")
    assert r.status_code == 303 and 'flowd_session=""' in r.headers["set-cookie"]


def test_pages__login_never_redirects_off_site(web_sqlite: Any) -> None:
    _m, client = web_sqlite
    c = client()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        r = c.post("/login", data={"token": TOKEN, "next": target})
        assert r.headers["location"] == "/", target


def test_pages__without_a_token_actions_are_disabled(web_sqlite: Any) -> None:
    m, client = web_sqlite
    tid = m.submit("echo", {}, allow_unknown=True)
    c = client(token=None)
    assert "Actions are disabled" in c.get(f"/tasks/{tid}").text
    r = c.post(f"/tasks/{tid}/action", data={"action": "pause"})
    assert r.status_code == 403 and m.get_task(tid).status.value == "pending"
    assert c.post("/login", data={"token": "anything-at-all"}).status_code == 401


def test_pages__the_database_password_never_reaches_a_page(tmp_path: Any) -> None:
    from flowd.manager import TaskManager
    from flowd.web.app import create_app

    # nothing listens on port 9: every page is the error page naming the (masked) URL
    m = TaskManager(db_url="postgresql+psycopg://flowd:s3cret-pw@127.0.0.1:9/flowd", handlers_dir=str(tmp_path))
    try:
        with TestClient(create_app(m, token=TOKEN), base_url="http://localhost") as c:
            for path in ("/", "/tasks", "/tasks/1", "/api/tasks"):
                r = c.get(path)
                assert r.status_code == 503, (path, r.text[:300])
                assert "s3cret-pw" not in r.text and "***" in r.text
            assert "s3cret-pw" not in c.get("/login").text
    finally:
        m.close()


def test_stream__sends_new_events_with_filters_and_ends_on_stop(web: Any) -> None:
    m, client = web
    before = m.submit("echo", {}, allow_unknown=True)
    stop = threading.Event()
    c = client(stop=stop, stream_interval=0.05)
    a = m.submit("echo", {}, allow_unknown=True)
    b = m.submit("other", {}, allow_unknown=True)
    first_of_a = m.task_audit(a)["events"]["items"][0]["id"]

    def act() -> None:
        time.sleep(0.5)
        m.pause_task(a)
        m.pause_task(b)
        m.pause_task(before)
        time.sleep(0.5)
        stop.set()

    threading.Thread(target=act, daemon=True).start()
    # from the newest event on, only task a's
    r = c.get(f"/api/events/stream?task={a}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    import json

    data = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [(e["task_id"], e["event_type"]) for e in data] == [(a, "task_paused")]
    ids = [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")]
    assert ids == [data[0]["id"]]
    # Last-Event-ID resumes after a known event: nothing lost between reconnects
    stop.clear()
    threading.Timer(0.4, stop.set).start()
    r = c.get("/api/events/stream?name=echo&event_type=task_paused", headers={"Last-Event-ID": str(first_of_a - 1)})
    got = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [(e["task_id"], e["event_type"]) for e in got] == [(a, "task_paused"), (before, "task_paused")]
    # latest=1 (the pages' stream): only the newest event of a poll, enough to say "refresh"
    stop.clear()
    threading.Timer(0.4, stop.set).start()
    r = c.get("/api/events/stream?latest=1", headers={"Last-Event-ID": str(first_of_a - 1)})
    got = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [(e["task_id"], e["event_type"]) for e in got] == [(before, "task_paused")]


@pytest.mark.parametrize("query", ["task=x", "event_type=nope", "after=abc"])
def test_stream__bad_filters_are_refused_before_streaming(web_sqlite: Any, query: str) -> None:
    _m, client = web_sqlite
    r = client().get(f"/api/events/stream?{query}")
    assert r.status_code == 400 and r.json()["error"]
