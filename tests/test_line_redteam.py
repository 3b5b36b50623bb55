"""Red-team tests for the waiting line (Queue.move, line-order claims, aria2 changePosition,
tellWaiting, addUri position). Each test states what the contract promises and fails while the
defect is there."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import dlman.queue as queue_package
from dlman.queue import Queue, prepare
from dlman.queue import runner as runner_module
from dlman.result import DownloadResult, Progress


def ids(jobs: Any) -> list[int]:
    return [job.id for job in jobs]


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    with Queue(tmp_path / "home") as q:
        yield q


# -- 1. a request asked for again jumps to its old place instead of joining the end ------------------

def test_a_failed_request_added_again_joins_the_end_of_the_line(queue: Queue, tmp_path: Path) -> None:
    """README: "Queued jobs start in line order: the order they were added, unless one was moved";
    Queue.move: "jobs added later join at the end". Adding a request that failed earlier reuses its
    row (fine), but the row keeps its old place (its id), so the job added last goes to the FRONT
    of the line and starts before every job that was already waiting."""
    first = queue.add("http://h/a", tmp_path)
    claimed = queue.claim("me")
    assert claimed is not None and claimed.id == first.id
    queue.settle("me", first.id, "failed", error="HTTP 404")
    b = queue.add("http://h/b", tmp_path)
    c = queue.add("http://h/c", tmp_path)
    assert ids(queue.waiting()) == [b.id, c.id]
    again = queue.add("http://h/a", tmp_path)  # asked for again, after b and c
    assert again.state == "queued"
    assert ids(queue.waiting()) == [b.id, c.id, again.id]  # observed: [again, b, c]
    assert queue.claim("me").id == b.id  # observed: the re-added job starts first


def test_add_uri_of_a_download_that_failed_appends_it_to_the_waiting_queue(tmp_path: Path, server,
                                                                           make_data) -> None:
    """aria2's addUri: "If position is omitted ..., the new download is appended to the end of
    the queue". Through the daemon, adding again a URL whose download failed puts it at the front
    of tellWaiting (and it starts next), ahead of downloads that were waiting before it."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from helpers import wait_for
    from serving import running

    slow = 256 * 1024
    server.add("/active.bin", make_data(1024 * 1024, seed=1), throttle=slow)
    server.add("/b.bin", make_data(1024, seed=2))
    server.add("/c.bin", make_data(1024, seed=3))
    with running(tmp_path, "-j", "1") as daemon:
        missing = daemon.call("aria2.addUri", [server.url("/late.bin")])  # 404 for now
        daemon.wait_status(missing, "error")
        active = daemon.call("aria2.addUri", [server.url("/active.bin")])
        daemon.wait_status(active, "active")
        b = daemon.call("aria2.addUri", [server.url("/b.bin")])
        c = daemon.call("aria2.addUri", [server.url("/c.bin")])
        server.add("/late.bin", make_data(1024, seed=4))
        again = daemon.call("aria2.addUri", [server.url("/late.bin")])  # appended, as aria2 does
        waiting = wait_for(lambda: [w["gid"] for w in daemon.call("aria2.tellWaiting", 0, 10, ["gid"])] or None,
                           what="a waiting queue")
        assert waiting == [b, c, again]  # observed: [again, b, c]


# -- 2. an ids run (the foreground `dlman add`) does not start jobs in line order -------------------

class RecordingEngine:
    """Writes 10 bytes per download and records the order downloads started in."""

    started: list[str] = []

    def __init__(self, **options: Any) -> None:
        pass

    async def __aenter__(self) -> "RecordingEngine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def download(self, urls: list[str], dest: str, *, on_progress: Any = None, **options: Any) -> DownloadResult:
        RecordingEngine.started.append(urls[0])
        path = Path(dest) / urls[0].rsplit("/", 1)[-1] if dest.endswith(os.sep) else Path(dest)
        path.write_bytes(b"0123456789")
        on_progress(Progress(path=path, downloaded=10, total=10, connections=0))
        await asyncio.sleep(0)
        return DownloadResult(path=path, size=10, url=urls[0], skipped=False)


def test_an_ids_run_starts_its_jobs_in_line_order(queue: Queue, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """README: queued jobs "start in that order, whichever dlman process runs them". A run over
    given ids (the foreground `dlman add`, `Queue.run(ids=...)`) offers them to claims a WINDOW
    (256) at a time in the order given, so a job moved to the front starts only after a whole
    window of jobs behind it (n - WINDOW of them). WINDOW is made small here to keep the test fast; with the real
    value it takes 257+ jobs."""
    monkeypatch.setattr(runner_module, "WINDOW", 4)
    jobs = queue.add_many([prepare(f"http://h/f{i}", tmp_path) for i in range(10)])
    last = jobs[-1]
    assert queue.move(last.id, 0) == 0
    assert ids(queue.waiting())[0] == last.id
    RecordingEngine.started = []
    outcomes = queue.run(jobs=1, ids=ids(jobs), engine_factory=RecordingEngine)
    assert {o.state for o in outcomes.values()} == {"done"}
    assert RecordingEngine.started[0] == "http://h/f9"  # observed: f0; f9 starts seventh (after f0-f5)


# -- 3. a line listing shows a job twice (or not at all) when another process moves one -----------

def test_a_listing_of_the_line_shows_each_waiting_job_once_while_another_process_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings page by (place, id) and hold no read open between pages. Places change on a
    move, so a job moved behind the cursor by another connection is listed twice, and one moved
    ahead of it is not listed at all: `dlman list --state queued --json` (and tellWaiting in a
    second daemon) prints a duplicate id / drops a waiting job, though the set of waiting jobs
    never changed. (Listing in id order, as before, never did this.)"""
    monkeypatch.setattr(queue_package, "PAGE", 3)
    home = tmp_path / "home"
    with Queue(home) as reader, Queue(home) as mover:
        reader.add_many([prepare(f"http://h/{i}") for i in range(1, 11)])
        stream = reader.iter_waiting()
        seen = [next(stream) for _ in range(3)]  # the first page: 1, 2, 3
        mover.move(2, 0, "end")   # already listed: moves past the cursor
        mover.move(9, 0)          # not listed yet: moves before the cursor
        seen += list(stream)
        listed = ids(seen)
        assert sorted(listed) == list(range(1, 11)), listed  # observed: 2 twice, 9 missing
