"""The HTTP API: the CLI's --json documents, actions behind the Bearer token, on every backend."""

from __future__ import annotations

import json
from typing import Any

from flowd.rules.shapes import page_json, task_json, worker_json
from tests.web.conftest import BEARER


def _roundtrip(doc: Any) -> Any:
    return json.loads(json.dumps(doc, default=str, ensure_ascii=False))


def test_api__reads_answer_the_cli_json_shapes(web: Any) -> None:
    m, client = web
    c = client()
    a = m.submit("echo", {"n": 1}, allow_unknown=True, tag="t1", labels={"tenant": "acme"})
    b = m.submit("echo", {"n": 2}, allow_unknown=True)
    m.submit("other", {}, allow_unknown=True)

    page = c.get("/api/tasks", params={"name": "echo"}).json()
    assert page == _roundtrip(page_json(m.query_tasks(name="echo"), task_json))
    assert [t["id"] for t in page["items"]] == [b, a] and page["total"] == 2 and page["has_more"] is False
    assert [t["id"] for t in c.get("/api/tasks?label=tenant=acme").json()["items"]] == [a]
    assert [t["id"] for t in c.get("/api/tasks?tag=t1&status=pending").json()["items"]] == [a]
    paged = c.get("/api/tasks?limit=1&offset=1").json()
    assert (paged["limit"], paged["offset"], paged["total"], paged["has_more"]) == (1, 1, 3, True)

    assert c.get(f"/api/tasks/{a}").json() == _roundtrip(task_json(m.get_task(a)))
    assert c.get(f"/api/tasks/{a}/audit").json() == _roundtrip(m.task_audit(a))
    assert c.get(f"/api/workflows/{a}").json() == _roundtrip(m.workflow_audit(a))
    summary = c.get(f"/api/workflows/{a}/summary").json()
    assert summary["root_task"]["id"] == a and summary["totals"]["tasks"] == 1
    assert c.get("/api/workers").json() == _roundtrip(page_json(m.workers(), worker_json))
    stats = c.get("/api/stats").json()
    assert {"tag": "t1", "name": "echo", "status": "pending", "count": 1} in stats["items"]
    assert c.get("/api/handlers").json() == {"items": [], "total": 0}
    assert c.get("/api/entities/user/u1").json() == {"entity": {"type": "user", "id": "u1"}, "tasks": []}
    assert c.get("/api/overview").json()["status_counts"] == {"pending": 3}


def test_api__bad_input_is_400_and_missing_is_404_with_one_line(web_sqlite: Any) -> None:
    _m, client = web_sqlite
    c = client()
    r = c.get("/api/tasks?status=bogus")
    assert r.status_code == 400 and "unknown status 'bogus'" in r.json()["error"]
    assert c.get("/api/tasks?limit=0").status_code == 400
    assert c.get("/api/tasks?parent=x").json() == {"error": "parent must be a whole number, not 'x'"}
    r = c.get("/api/tasks/999")
    assert r.status_code == 404 and "task 999 not found" in r.json()["error"]
    assert c.get("/api/nothing").status_code == 404


def test_api__actions_need_the_bearer_token(web: Any) -> None:
    m, client = web
    c = client()
    tid = m.submit("echo", {}, allow_unknown=True)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic x"}):
        r = c.post(f"/api/tasks/{tid}/pause", headers=headers)
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert c.delete(f"/api/tasks/{tid}", headers=headers).status_code == 401
    assert m.get_task(tid).status.value == "pending"
    # without a configured token, no action at all
    r = client(token=None).post(f"/api/tasks/{tid}/pause", headers=BEARER)
    assert r.status_code == 403 and "--token" in r.json()["error"]
    assert m.get_task(tid).status.value == "pending"


def test_api__actions_follow_the_cli_rules(web: Any) -> None:
    m, client = web
    c = client()
    tid = m.submit("echo", {}, allow_unknown=True)
    r = c.post(f"/api/tasks/{tid}/pause", headers=BEARER)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    refused = c.post(f"/api/tasks/{tid}/pause", headers=BEARER)
    assert refused.status_code == 409
    allowed = "failed, pending, running, timeout"
    assert refused.json()["error"] == f"cannot pause task {tid}: it is paused (allowed from: {allowed})"
    r = c.post(f"/api/tasks/{tid}/resume", headers=BEARER, json={"reason": "checked"})
    assert r.json()["status"] == "pending"
    resumed = m.task_audit(tid, event_types=["task_status_changed"])["events"]["items"][-1]
    assert resumed["metadata"]["resume_reason"] == "checked"
    # retry is for failures only
    assert c.post(f"/api/tasks/{tid}/retry", headers=BEARER).status_code == 409
    r = c.post(f"/api/tasks/{tid}/cancel?reason=not+needed", headers=BEARER)
    assert (r.json()["status"], r.json()["error"]) == ("permanently_failed", "not needed")
    r = c.post(f"/api/tasks/{tid}/retry", headers=BEARER)
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["retry_count"] == 0
    assert c.post(f"/api/tasks/{tid}/explode", headers=BEARER).status_code == 404
    assert c.post(f"/api/tasks/{tid}/cancel", headers=BEARER, content=b"[1]").status_code == 400
    r = c.delete(f"/api/tasks/{tid}", headers=BEARER)
    assert r.json() == {"deleted": 1}
    assert c.get(f"/api/tasks/{tid}").status_code == 404
    assert c.delete(f"/api/tasks/{tid}", headers=BEARER).status_code == 404
    assert c.post(f"/api/tasks/{tid}/pause", headers=BEARER).status_code == 404


def test_api__off_loopback_reading_needs_the_token_too(web_sqlite: Any) -> None:
    m, client = web_sqlite
    tid = m.submit("echo", {}, allow_unknown=True)
    c = client(public=True)
    r = c.get("/api/tasks")
    assert r.status_code == 401
    assert c.get(f"/api/tasks/{tid}").status_code == 401
    assert c.get("/api/events/stream").status_code == 401
    assert c.get("/api/tasks", headers=BEARER).json()["total"] == 1
    # the page sends people to the login form; the stylesheet and the form itself stay reachable
    r = c.get("/tasks")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/tasks"
    assert c.get("/static/flowd.css").status_code == 200
    assert c.get("/login").status_code == 200
    # local: reading is open, acting is not
    local = client(public=False)
    assert local.get("/api/tasks").status_code == 200


def test_api__a_local_dashboard_answers_to_a_local_host_only(web_sqlite: Any) -> None:
    _m, client = web_sqlite
    c = client()
    for host in ("127.0.0.1:8765", "localhost", "[::1]:8765", "127.0.0.2"):
        assert c.get("/api/stats", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8765", "10.0.0.1"):
        r = c.get("/api/stats", headers={"Host": host})
        assert r.status_code == 400 and "localhost only" in r.json()["error"], host
        assert c.get("/", headers={"Host": host}).status_code == 400
    # a public dashboard has the token instead: any Host name reaches it
    assert client(public=True).get("/api/stats", headers={"Host": "flowd.example", **BEARER}).status_code == 200


def test_api__refuses_a_public_dashboard_without_a_token(web_sqlite: Any) -> None:
    import pytest

    from flowd.errors import BadInput
    from flowd.web.app import create_app
    from flowd.web.serve import check_bind

    m, _client = web_sqlite
    with pytest.raises(BadInput, match="needs a token"):
        create_app(m, token=None, public=True)
    with pytest.raises(BadInput, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        check_bind("0.0.0.0", None)
    assert check_bind("127.0.0.1", None) is False
    assert check_bind("::1", None) is False
    assert check_bind("localhost", None) is False
    assert check_bind("0.0.0.0", "some-token") is True
