"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `flowd web`
and a worker running as processes. Skipped when Chromium or Playwright is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.web.processes import free_port, start_web

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="browser tests need Chromium: apt-get install chromium"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="browser tests need Playwright: pip install playwright"
    ),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "browser-token-42"
WAIT = 20_000  # ms: a generous deadline for a loaded machine; the tests end as soon as it is met

HANDLERS = """
import os
import time
from flowd import SubTasks, handler

@handler("echo")
def echo(task):
    return task.payload

@handler("slow", steps={"fetch": 30, "build": 50, "ship": 20})
def slow(task):
    for step in ("fetch", "build", "ship"):
        task.step(step)
        time.sleep(task.payload.get("seconds", 0.1))
    return {"shipped": True}

@handler("gated", steps={"wait": 30, "build": 50, "ship": 20})
def gated(task):
    # waits for the test to create the gate file: the page is open before the progress moves
    task.step("wait")
    while not os.path.exists(task.payload["gate"]):
        time.sleep(0.05)
    task.step("build")
    time.sleep(0.2)
    task.step("ship")
    return {"shipped": True}

@handler("pipeline")
def pipeline(task):
    if task.stage == 0:
        return SubTasks([{"name": "echo", "payload": {"i": i}} for i in range(2)])
    return {"children": len(task.children())}
"""


class Site:
    """The running dashboard, a browser, and a TaskManager on the same database (quicker than
    a `flowd` process per submit or poll on a loaded machine)."""

    def __init__(self, cli: Cli, base: str, browser: Any, manager: Any) -> None:
        self.cli = cli
        self.base = base
        self.browser = browser
        self.m = manager

    def submit(self, name: str, payload: dict[str, Any]) -> int:
        return int(self.m.submit(name, payload))

    def park(self) -> int:
        """A task no worker serves: it stays pending (or wherever the test moves it)."""
        return int(self.m.submit("parked", {}, allow_unknown=True))

    def status(self, tid: int) -> str:
        return str(self.m.get_task(tid).status.value)

    def wait_status(self, tid: int, status: str) -> None:
        self.cli.wait_until(lambda: self.status(tid) == status, what=f"task {tid} {status}")

    def page(self, logged_in: bool = False) -> Any:
        context = self.browser.new_context()
        context.set_default_timeout(WAIT)
        page = context.new_page()
        if logged_in:
            page.goto(f"{self.base}/login?next=/")
            page.fill("input[name=token]", TOKEN)
            page.click("form.login button")
            page.wait_for_url(f"{self.base}/")
        return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from playwright.sync_api import sync_playwright

    from flowd.manager import TaskManager

    tmp = tmp_path_factory.mktemp("web")
    cli = Cli(tmp, f"sqlite:///{tmp / 'flowd.db'}")
    cli.handler_file("demo", HANDLERS)
    cli.run("db", "upgrade")
    cli.worker()
    port = free_port()
    web = start_web(cli, "--token", TOKEN, port=port, log=tmp / "web.log")
    m = TaskManager(db_url=cli.db_url, handlers_dir=str(cli.handlers))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                yield Site(cli, f"http://127.0.0.1:{port}", browser, m)
            finally:
                browser.close()
    finally:
        m.close()
        web.terminate()
        web.wait(10)
        cli.close()


def test_browser__overview_leads_to_a_task_and_its_attempts(site: Site) -> None:
    tid = site.submit("echo", {"hello": "<b>world</b>"})
    site.wait_status(tid, "completed")
    page = site.page()
    page.goto(site.base + "/")
    page.locator("#workers td", has_text="a").first.wait_for()  # the worker of pod a is listed
    assert int(page.locator("#counts a[href='/tasks?status=completed'] .n").inner_text()) >= 1
    page.click("nav a[href='/tasks']")
    page.click(f"table.tasks a[href='/tasks/{tid}'] >> nth=0")
    page.wait_for_url(f"{site.base}/tasks/{tid}")
    attempts = page.locator("#attempts tr.attempt")
    assert attempts.count() == 1
    assert "completed" in attempts.first.inner_text()
    # the payload shows as text, never as markup
    assert "<b>world</b>" in page.locator("#data pre").first.inner_text()
    assert page.locator("#data pre b").count() == 0


def test_browser__a_running_task_s_progress_arrives_without_a_reload(site: Site) -> None:
    gate = site.cli.tmp / f"gate-{free_port()}"
    tid = site.submit("gated", {"gate": str(gate)})
    page = site.page()
    page.goto(f"{site.base}/tasks/{tid}")
    page.wait_for_function("document.getElementById('live-dot').classList.contains('on')")
    page.evaluate("window.__notReloaded = true")
    # claimed and at its first step (shown at load, or arrived live)
    page.locator("#progress .stage-name", has_text="wait").wait_for()
    assert page.locator("#progress .pct").inner_text() == "0%"
    assert "running" in page.locator("#task-head h1").inner_text()
    gate.touch()
    # the rest arrives through the event stream: steps, the end, the closed attempt
    page.locator("#task-head h1 .status", has_text="completed").wait_for()
    page.locator("#progress .stage-name", has_text="ship").wait_for()
    assert page.locator("#progress .pct").inner_text() == "100%"
    page.locator("#attempts tr.attempt", has_text="completed").wait_for()
    page.locator("#events tr.event", has_text="task_completed").wait_for()
    assert page.evaluate("window.__notReloaded") is True


def test_browser__a_workflow_page_shows_its_tree(site: Site) -> None:
    root = site.submit("pipeline", {})
    site.wait_status(root, "completed")
    page = site.page()
    page.goto(f"{site.base}/tasks/{root}")
    page.click(f"a[href='/workflows/{root}']")
    page.wait_for_url(f"{site.base}/workflows/{root}")
    nodes = page.locator("#tree li.node")
    assert nodes.count() == 3
    assert "pipeline" in nodes.nth(0).inner_text() and "echo" in nodes.nth(1).inner_text()
    assert all("completed" in nodes.nth(i).inner_text() for i in range(3))
    assert page.locator("#timeline .g-bar").count() == 4  # two stages of the root, one run of each child
    assert page.locator("#critical ol.path li").count() >= 2


def test_browser__pause_and_resume_a_task_from_its_page(site: Site) -> None:
    tid = site.park()
    page = site.page(logged_in=True)
    page.goto(f"{site.base}/tasks/{tid}")
    page.click("button[data-action=pause]")
    page.locator("#task-head h1 .status", has_text="paused").wait_for()
    assert f"task {tid} paused" in page.locator(".flash.ok").inner_text()
    assert site.status(tid) == "paused"
    page.fill("form:has(button[data-action=resume]) input[name=reason]", "checked by hand")
    page.click("button[data-action=resume]")
    page.locator("#task-head h1 .status", has_text="pending").wait_for()
    assert site.status(tid) == "pending"
    events = site.m.task_audit(tid, event_types=["task_status_changed"])["events"]["items"]
    assert events[-1]["metadata"]["resume_reason"] == "checked by hand"
    # a refused transition comes back with its one-line reason
    page.click("button[data-action=pause]")
    page.locator("#task-head h1 .status", has_text="paused").wait_for()
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = page.evaluate(
        "async ([id, csrf]) => (await fetch(`/tasks/${id}/action`, {method: 'POST',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: `action=pause&csrf=${csrf}`})).url",
        [tid, csrf],
    )
    page.goto(refused)
    assert f"cannot pause task {tid}: it is paused" in page.locator(".flash.bad").inner_text()


def test_browser__an_action_without_the_token_is_refused(site: Site) -> None:
    tid = site.park()
    page = site.page()
    page.goto(f"{site.base}/tasks/{tid}")
    assert page.locator("button[data-action=pause]").count() == 0
    assert page.locator(".actions a", has_text="Log in").count() == 1
    api = page.evaluate(
        "async (id) => { const r = await fetch(`/api/tasks/${id}/pause`, {method: 'POST'});"
        " return [r.status, await r.json()]; }",
        tid,
    )
    assert api[0] == 401 and "Bearer" in api[1]["error"]
    form = page.evaluate(
        "async (id) => { const r = await fetch(`/tasks/${id}/action`, {method: 'POST',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'action=pause'});"
        " return r.url; }",
        tid,
    )
    assert "/login" in form
    # logged in, but a form without this session's CSRF token is refused as well
    other = site.page(logged_in=True)
    other.goto(f"{site.base}/tasks/{tid}")
    status = other.evaluate(
        "async (id) => (await fetch(`/tasks/${id}/action`, {method: 'POST',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'action=pause&csrf=forged'})).status",
        tid,
    )
    assert status == 403
    assert site.status(tid) == "pending"


def test_browser__the_overview_fits_a_phone_in_light_and_dark(site: Site) -> None:
    """(With FLOWD_SCREENSHOT=path it also saves a 1200x700 picture of the overview: how
    docs/web-overview.png is made.)"""
    for scheme in ("light", "dark"):
        context = site.browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=scheme)
        page = context.new_page()
        page.goto(site.base + "/")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the overview is {width}px wide on a phone"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") == (scheme == "light"), background
        context.close()
    target = os.environ.get("FLOWD_SCREENSHOT")
    if target:
        context = site.browser.new_context(viewport={"width": 1200, "height": 700}, color_scheme="light")
        page = context.new_page()
        page.goto(site.base + "/")
        page.screenshot(path=target)
        context.close()
