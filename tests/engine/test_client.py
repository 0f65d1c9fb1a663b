"""flowd from application code: TaskManager(db_url, **settings), connect(), wait/result, asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowd
from flowd.errors import BadInput, NotFound
from flowd.manager import TaskManager
from flowd.model import TaskStatus

MakeManager = Callable[..., TaskManager]


def _double(task: Any) -> dict[str, Any]:
    if task.payload.get("sleep"):
        time.sleep(task.payload["sleep"])
    return {"doubled": task.payload["n"] * 2}


def _broken(task: Any) -> None:
    raise ValueError(f"cannot handle {task.payload}")


@pytest.fixture
def worker(db_url: str, make_manager: MakeManager) -> TaskManager:
    """A worker running in this process, on its own manager (the client below is another)."""
    w = make_manager(db_url, max_concurrent_tasks=8)
    w.use("double", _double)
    w.use("broken", {"handler": _broken, "options": {"max_retries": 1}})
    w.start()
    deadline = time.monotonic() + 20
    while {h.name for h in w.fleet_handlers()} != {"broken", "double"}:  # published: a client may submit
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return w


@pytest.fixture
def client(db_url: str, worker: TaskManager, closers: list[Callable[[], None]]) -> Iterator[TaskManager]:
    """A client with a 30 s poll interval: a wait that ends quickly woke on a notification."""
    tm = flowd.connect(db_url, poll_interval=30, handlers_dir="/nonexistent")
    closers.append(tm.close)
    yield tm


def test_task_manager__db_url_first_settings_as_keywords(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with TaskManager(url, max_retries=5, timeout=12.5) as tm:
        assert tm.settings.db_url == url and tm.settings.max_retries == 5 and tm.settings.timeout == 12.5
    with flowd.connect(url, max_retries=2) as tm:
        assert isinstance(tm, TaskManager) and tm.settings.max_retries == 2


def test_task_manager__unset_settings_come_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWD_MAX_RETRIES", "7")
    with TaskManager(f"sqlite:///{tmp_path / 'x.db'}") as tm:
        assert tm.settings.max_retries == 7


def test_task_manager__errors_name_python_parameters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(BadInput, match=r"unknown setting.*max_retrys") as e:
        TaskManager(url, max_retrys=3)
    assert "--" not in str(e.value)
    with pytest.raises(BadInput, match="max_retries") as e:
        TaskManager(url, max_retries=0)
    assert "flags" not in str(e.value)
    with TaskManager(url, handlers_dir=str(tmp_path / "none")) as tm:
        with pytest.raises(BadInput, match=r"allow_unknown=True") as e:
            tm.submit("nobody_serves_this", {})
        assert "--allow-unknown" not in str(e.value)
        with pytest.raises(BadInput, match="debounce needs key") as e:
            tm.submit("x", {}, debounce=1, allow_unknown=True)
        assert "--" not in str(e.value)


def test_context_manager__stops_its_threads_and_pool(tmp_path: Path) -> None:
    # only this manager's thread: a manager another test left open keeps its own
    others = {t for t in threading.enumerate() if t.name == "flowd-wait"}
    with flowd.connect(f"sqlite:///{tmp_path / 'x.db'}", handlers_dir=str(tmp_path)) as tm:
        tid = tm.submit("later", {}, allow_unknown=True)
        with pytest.raises(TimeoutError):
            tm.wait(tid, timeout=0.05)
        mine = [t for t in threading.enumerate() if t.name == "flowd-wait" and t not in others]
        assert mine and all(t.is_alive() for t in mine)
        pool = tm.db.engine.pool
        assert pool.checkedin() >= 1  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in mine):
        assert time.monotonic() < deadline, "the wait thread outlived the manager"
        time.sleep(0.01)
    assert pool.checkedin() == 0  # type: ignore[attr-defined]


def test_wait__returns_the_completed_task_woken_by_the_database(client: TaskManager) -> None:
    tid = client.submit("double", {"n": 21})
    started = time.monotonic()
    t = client.wait(tid, timeout=20)
    # the client polls every 30 s: ending this early means LISTEN/NOTIFY, the WAL watch or the probe
    assert time.monotonic() - started < 10
    assert t.status is TaskStatus.COMPLETED and t.result == {"doubled": 42}
    assert client.result(tid) == {"doubled": 42}


def test_wait__times_out_with_timeout_error(client: TaskManager) -> None:
    tid = client.submit("double", {"n": 1, "sleep": 3})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"task {tid} is still"):
        client.wait(tid, timeout=0.3)
    assert time.monotonic() - started < 2.5
    assert client.wait(tid, timeout=20).result == {"doubled": 2}


def test_wait__refuses_a_cron_task_and_unknown_ids(client: TaskManager) -> None:
    cid = client.cron("double", "0 7 * * *", {"n": 1})
    with pytest.raises(BadInput, match="cron"):
        client.wait(cid)
    with pytest.raises(NotFound):
        client.wait(999_999, timeout=1)
    with pytest.raises(BadInput, match="timeout"):
        client.wait(cid, timeout=-1)


def test_result__raises_task_failed_with_id_and_error(client: TaskManager) -> None:
    tid = client.submit("broken", {"k": 1})
    with pytest.raises(flowd.TaskFailed) as e:
        client.result(tid, timeout=20)
    assert e.value.task_id == tid and "ValueError: cannot handle" in (e.value.error or "")
    assert client.wait(tid).status is TaskStatus.PERMANENTLY_FAILED


def test_threads__share_one_manager(client: TaskManager) -> None:
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = client.result(client.submit("double", {"n": i}), timeout=30)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {i: {"doubled": 2 * i} for i in range(12)}


def test_asyncio__submit_wait_result_never_block_the_loop(client: TaskManager) -> None:
    async def main() -> tuple[Any, Any, int]:
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        tid = await client.submit_async("double", {"n": 5, "sleep": 0.5})
        record = await client.wait_async(tid, timeout=20)
        res = await client.result_async(tid)
        many = await asyncio.gather(
            *[client.result_async(await client.submit_async("double", {"n": i}), timeout=20) for i in range(5)]
        )
        assert many == [{"doubled": 2 * i} for i in range(5)]
        with pytest.raises(TimeoutError):
            await client.wait_async(await client.submit_async("double", {"n": 0, "sleep": 2}), timeout=0.2)
        bad = await client.submit_async("broken", {})
        with pytest.raises(flowd.TaskFailed):
            await client.result_async(bad, timeout=20)
        stop.set()
        await ticker
        return record, res, ticks

    record, res, ticks = asyncio.run(main())
    assert record.status is TaskStatus.COMPLETED and res == {"doubled": 10}
    # the handler slept 0.5 s while the loop waited: the ticker kept running all along
    assert ticks >= 20
