"""The SQLite queue and its runner, on a real database file, with a fake engine (no network)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dlman.errors import HTTPStatusError, InvalidInputError
from dlman.home import resolve_home
from dlman.queue import STALE_AFTER, Outcome, Queue, redact
from dlman.result import DownloadResult, Progress


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    with Queue(tmp_path / "home") as q:
        yield q


class FakeEngine:
    """Downloads by URL path: ``/fail`` raises 404, ``/slow`` runs until cancelled, else writes 10 bytes."""

    instances: list["FakeEngine"] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.calls: list[tuple[list[str], str, dict]] = []
        FakeEngine.instances.append(self)

    async def __aenter__(self) -> "FakeEngine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def download(self, urls: list[str], dest: str, *, on_progress: Any = None, **options: Any) -> DownloadResult:
        self.calls.append((urls, dest, options))
        path = Path(dest) / urls[0].rsplit("/", 1)[-1] if dest.endswith(os.sep) else Path(dest)
        if urls[0].endswith("/fail"):
            raise HTTPStatusError(f"{urls[0]}: not found (HTTP 404)", status=404, url=urls[0])
        if urls[0].endswith("/slow"):
            part = path.with_name(path.name + ".part")
            part.write_bytes(b"x" * 5)
            while True:
                on_progress(Progress(path=path, downloaded=5, total=10, connections=1))
                await asyncio.sleep(0.05)
        path.write_bytes(b"0123456789")
        on_progress(Progress(path=path, downloaded=10, total=10, connections=0))
        return DownloadResult(path=path, size=10, url=urls[0], skipped=False)


def run(queue: Queue, **kwargs: Any) -> dict[int, Outcome]:
    return queue.run(engine_factory=FakeEngine, **kwargs)


def test_home_resolution() -> None:
    assert resolve_home("/x/y") == Path("/x/y")
    assert resolve_home(None, {"DLMAN_HOME": "/a", "XDG_DATA_HOME": "/b"}) == Path("/a")
    assert resolve_home(None, {"XDG_DATA_HOME": "/b", "HOME": "/h"}) == Path("/b/dlman")
    assert resolve_home(None, {"HOME": "/h"}) == Path("/h/.local/share/dlman")


def test_database_is_private(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    Queue(home).close()
    assert stat.S_IMODE((home / "queue.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_add_list_get(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/a.iso", tmp_path / "dl", output="x.iso", connections=3, headers=["A: b"])
    assert job.state == "queued" and job.dest == str(tmp_path / "dl" / "x.iso") and not job.dest_is_dir
    assert job.options == {"connections": 3, "headers": ["A: b"]}
    other = queue.add(["http://h/b", "http://m/b"], str(tmp_path) + os.sep)
    assert other.dest_is_dir and other.urls == ("http://h/b", "http://m/b")
    assert [j.id for j in queue.list()] == [job.id, other.id]
    assert queue.get(job.id) == job and queue.get(999) is None
    assert queue.list("done") == []
    with pytest.raises(InvalidInputError):
        queue.list("bogus")


@pytest.mark.parametrize("bad", [{"connections": 0}, {"checksum": "sha256:12"}, {"headers": ["no colon"]},
                                 {"retries": -1}, {"timeout": 0}, {"colour": "red"}])
def test_add_rejects_bad_options(queue: Queue, bad: dict) -> None:
    with pytest.raises(InvalidInputError):
        queue.add("http://h/a", **bad)
    assert queue.list() == []


def test_add_rejects_bad_url(queue: Queue) -> None:
    with pytest.raises(InvalidInputError):
        queue.add("file:///etc/passwd")


def test_same_request_reuses_the_job(queue: Queue, tmp_path: Path) -> None:
    first = queue.add("http://h/a", tmp_path, output="a")
    queue.pause(first.id)
    again = queue.add("http://h/a", tmp_path, output="a", connections=2)
    assert again.id == first.id and again.state == "queued" and again.options == {"connections": 2}
    assert len(queue.list()) == 1
    assert queue.add("http://h/a", tmp_path, output="b").id != first.id


def test_claim_pause_resume(queue: Queue) -> None:
    a, b = queue.add("http://h/a"), queue.add("http://h/b")
    queue.pause(a.id)
    claimed = queue.claim("me")
    assert claimed.id == b.id and claimed.state == "active" and claimed.owner_pid == os.getpid()
    assert queue.claim("me") is None
    assert [j.state for j in queue.resume(a.id)] == ["queued"]
    assert queue.claim("me", ids=[b.id]) is None
    assert queue.claim("me", ids=[a.id]).id == a.id


def test_unknown_ids_change_nothing(queue: Queue) -> None:
    job = queue.add("http://h/a")
    for action in (queue.pause, queue.resume, queue.remove):
        with pytest.raises(InvalidInputError, match="42"):
            action(job.id, 42)
    assert queue.get(job.id).state == "queued"


def test_remove_delete_keeps_finished_files(queue: Queue, tmp_path: Path) -> None:
    done = queue.add("http://h/a", tmp_path, output="done.bin")
    part = queue.add("http://h/b", tmp_path, output="part.bin")
    for name in ("done.bin", "part.bin.part", "part.bin.part.state"):
        (tmp_path / name).write_bytes(b"x")
    queue.remove(done.id, part.id, delete=True)
    assert queue.list() == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["done.bin"]


def test_dead_owner_is_taken_over(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has just ended
    gone.wait()
    queue._conn.execute("UPDATE jobs SET owner_pid = ? WHERE id = ?", (gone.pid, job.id))
    assert queue.claim("new-owner").id == job.id


def test_stale_heartbeat_is_taken_over(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")
    assert queue.claim("new") is None  # our own pid is alive and the heartbeat fresh
    queue._conn.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time() - STALE_AFTER - 1, job.id))
    assert queue.claim("new").id == job.id
    assert queue.heartbeat("old-owner", {job.id: (1, 2, None)}) == {job.id: "lost"}


def test_heartbeat_reports_pause_and_remove(queue: Queue, tmp_path: Path) -> None:
    a, b = queue.add("http://h/a"), queue.add("http://h/b")
    queue.claim("me"), queue.claim("me")
    assert queue.heartbeat("me", {a.id: (5, 10, str(tmp_path / "a")), b.id: (0, None, None)}) == {}
    assert queue.get(a.id).dest == str(tmp_path / "a") and queue.get(a.id).bytes_done == 5
    queue.pause(a.id, wait=0)
    queue.remove(b.id, wait=0)
    assert queue.get(b.id) is None  # hidden while its owner stops it
    assert queue.heartbeat("me", {a.id: (5, 10, None), b.id: (0, None, None)}) == {a.id: "pause", b.id: "remove"}


def _claim_all(home: str, found: "multiprocessing.Queue[list[int]]") -> None:
    with Queue(home) as q:
        mine = []
        while (job := q.claim(f"p{os.getpid()}")) is not None:
            mine.append(job.id)
        found.put(mine)


def test_concurrent_claimers_never_share_a_job(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with Queue(home) as q:
        q.add_many([])
        for i in range(60):
            q.add(f"http://h/{i}")
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded test process
    found = ctx.Queue()
    workers = [ctx.Process(target=_claim_all, args=(home, found)) for _ in range(4)]
    for w in workers:
        w.start()
    results = [found.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(10)
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == list(range(1, 61))


def test_threads_share_one_queue_safely(queue: Queue) -> None:
    for i in range(40):
        queue.add(f"http://h/{i}")
    claimed: list[int] = []

    def worker() -> None:
        while (job := queue.claim("t")) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 41))


def test_run_downloads_everything(queue: Queue, tmp_path: Path) -> None:
    ok = queue.add("http://h/ok", str(tmp_path) + os.sep, connections=2, headers=["A: b"], insecure=True)
    bad = queue.add("http://user:pw@h/fail", tmp_path, output="f")
    outcomes = run(queue, jobs=2)
    assert outcomes[ok.id].state == "done" and outcomes[ok.id].path == str(tmp_path / "ok")
    assert outcomes[bad.id].state == "failed" and "pw" not in outcomes[bad.id].error
    assert queue.get(ok.id).state == "done" and queue.get(ok.id).dest == str(tmp_path / "ok")
    failed = queue.get(bad.id)
    assert failed.state == "failed" and "not found" in failed.error
    engines = {tuple(sorted(e.options.items())) for e in FakeEngine.instances[-2:]}
    assert (("insecure", True), ("limit_rate", None)) in engines  # one engine per engine-level config


def test_run_with_ids_waits_only_for_those(queue: Queue, tmp_path: Path) -> None:
    mine = queue.add("http://h/mine", tmp_path, output="m")
    other = queue.add("http://h/other", tmp_path, output="o")
    assert set(run(queue, ids=[mine.id])) == {mine.id}
    assert queue.get(other.id).state == "queued"


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_pause_and_remove_stop_an_active_job(queue: Queue, tmp_path: Path) -> None:
    paused = queue.add("http://h/slow", tmp_path, output="p")
    removed = queue.add("http://h/slow", tmp_path, output="r")

    async def scenario() -> dict[int, Outcome]:
        task = asyncio.create_task(queue.arun(2, engine_factory=FakeEngine))
        await _until(lambda: all(j.state == "active" and j.bytes_done == 5 for j in queue.list()))
        started = time.monotonic()
        await asyncio.to_thread(queue.pause, paused.id)
        await asyncio.to_thread(queue.remove, removed.id, delete=True)
        outcomes = await task
        assert time.monotonic() - started < 2.0
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[paused.id].state == "paused" and outcomes[removed.id].state == "removed"
    assert queue.get(paused.id).state == "paused" and queue.get(removed.id) is None
    assert (tmp_path / "p.part").exists() and not (tmp_path / "r.part").exists()


def test_cancel_puts_jobs_back_in_the_queue(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/slow", tmp_path, output="s")

    async def scenario() -> None:
        task = asyncio.create_task(queue.arun(1, engine_factory=FakeEngine))
        await _until(lambda: queue.get(job.id).bytes_done == 5)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # a second Ctrl-C while stopping
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    after = queue.get(job.id)
    assert after.state == "queued" and after.bytes_done == 5 and (tmp_path / "s.part").exists()
    assert queue.claim("next").id == job.id  # released: no wait for a stale heartbeat


def test_redact() -> None:
    assert redact("GET https://u:p@h/x failed") == "GET https://***@h/x failed"
