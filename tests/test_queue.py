"""The SQLite queue and its runner, on a real database file, with a fake engine (no network)."""

from __future__ import annotations

import asyncio
import multiprocessing
import math
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from dlman.errors import HTTPStatusError, InvalidInputError
from dlman.home import resolve_home
import dlman.queue as queue_package
from dlman.queue import HOST, STALE_AFTER, TICK, NewJob, Outcome, Queue, prepare, redact
from dlman.queue import ownership, store
from dlman.queue.jobs import line_position, spread, stays_done
from dlman.queue.ownership import (Process, owner_gone, parse_start_time, stale_after, start_time,
                                   this_process)
from dlman.queue import runner as runner_module
from dlman.queue.runner import WINDOW
from dlman.result import DownloadResult, Progress
from helpers import dlman_peak


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


def poke(queue: Queue, sql: str, *params: Any) -> None:
    """Change the database behind the queue's back, as another process would."""
    with closing(sqlite3.connect(queue.path)) as conn, conn:
        conn.execute(sql, params)


def peek(queue: Queue, sql: str, *params: Any) -> Any:
    with closing(sqlite3.connect(queue.path)) as conn:
        return conn.execute(sql, params).fetchone()


def test_dead_owner_is_taken_over(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has just ended
    gone.wait()
    poke(queue, "UPDATE jobs SET owner_pid = ? WHERE id = ?", gone.pid, job.id)
    assert queue.claim("new-owner").id == job.id


def test_live_owner_keeps_its_job_however_old_its_heartbeat(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")  # owned by this process, which is alive
    poke(queue, "UPDATE jobs SET heartbeat = ? WHERE id = ?", time.time() - 100 * STALE_AFTER, job.id)
    assert queue.claim("new") is None
    queue.reap()
    assert queue.heartbeat("old-owner", {job.id: (1, 2, None)}) == {}
    assert queue.get(job.id).state == "active" and queue.get(job.id).bytes_done == 1


def test_reused_pid_is_not_the_owner(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")
    poke(queue, "UPDATE jobs SET owner_start = owner_start - 1 WHERE id = ?", job.id)  # our pid, another process
    assert queue.claim("new").id == job.id
    assert queue.heartbeat("old-owner", {job.id: (1, 2, None)}) == {job.id: "lost"}


@pytest.mark.parametrize("where", ["owner_host = 'another-host'", "owner_space = 'another-boot/pid:[1]'"])
def test_owner_we_cannot_see_is_judged_by_its_heartbeat(queue: Queue, where: str) -> None:
    job = queue.add("http://h/a")
    queue.claim("old-owner")
    poke(queue, f"UPDATE jobs SET {where}, owner_pid = 1 WHERE id = ?", job.id)
    assert queue.claim("new") is None  # its heartbeat is fresh
    poke(queue, "UPDATE jobs SET heartbeat = ? WHERE id = ?", time.time() - STALE_AFTER - 1, job.id)
    assert queue.claim("new").id == job.id
    assert queue.heartbeat("old-owner", {job.id: (1, 2, None)}) == {job.id: "lost"}


HERE = Process("here", "boot/pid:[1]", 100, 5000)


@pytest.mark.parametrize("owner,heartbeat_age,running,started,gone", [
    # This host, this pid space: the process decides, not the heartbeat.
    (HERE, 0, True, 5000, False),
    (HERE, 1000, True, 5000, False),             # stopped or slow: a live process keeps its jobs
    (HERE, 0, False, None, True),                # its pid is gone
    (HERE, 0, True, 7000, True),                 # its pid now runs another process
    (HERE, 1000, True, None, False),             # start unreadable now: a live pid keeps it
    (Process("here", "boot/pid:[1]", 100, None), 1000, True, 7000, False),  # nothing to compare with
    (Process("here", "boot/pid:[1]", 0, None), 0, True, None, True),     # no pid at all
    # Another host, or a pid space we cannot look into: only the heartbeat tells.
    (Process("there", "boot/pid:[1]", 100, 5000), 1, False, None, False),
    (Process("there", "boot/pid:[1]", 100, 5000), 11, True, 5000, True),
    (Process("here", "old-boot/pid:[1]", 100, 5000), 11, True, 5000, True),
    (Process("here", None, 100, None), 1, False, None, False),
    (Process("there", None, 100, None), None, True, None, True),  # never beat
])
def test_owner_gone_rule(owner: Process, heartbeat_age: float | None, running: bool, started: int | None,
                         gone: bool) -> None:
    now = 1_000_000.0
    heartbeat = None if heartbeat_age is None else now - heartbeat_age
    assert owner_gone(owner, heartbeat, now, HERE, running=lambda pid: running, started=lambda pid: started,
                      stale=10.0) is gone


@pytest.mark.parametrize("raw,start", [
    (b"42 (python3) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 8812 1000 10 18446744073709551615", 8812),
    (b"42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 77 1000 10", 77),  # a name with ") "
    (b"42 (x y) S 1", None),
    (b"", None),
])
def test_start_time_is_field_22_after_the_command_name(raw: bytes, start: int | None) -> None:
    assert parse_start_time(raw) == start


def test_this_process_is_recognisable() -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.host == HOST
    if sys.platform.startswith("linux"):
        assert me.space and me.start == start_time(os.getpid()) and isinstance(me.start, int)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert start_time(child.pid) > me.start  # born later: a pid reused later never matches
        finally:
            child.kill()
            child.wait()


def test_stale_after_can_be_overridden() -> None:
    assert stale_after({}) == 10.0
    assert stale_after({"DLMAN_STALE_AFTER": "1.5"}) == 1.5
    assert stale_after({"DLMAN_STALE_AFTER": "soon"}) == stale_after({"DLMAN_STALE_AFTER": "-3"}) == 10.0


def test_paused_then_resumed_row_stays_with_its_owner(queue: Queue) -> None:
    job = queue.add("http://h/a")
    assert queue.claim("first").id == job.id
    queue.pause(job.id, wait=0)
    assert [j.state for j in queue.resume(job.id)] == ["queued"]  # before the owner's next tick
    assert queue.claim("second") is None  # still owned: not claimable
    queue.reap()
    assert queue.claim("second") is None
    assert queue.heartbeat("first", {job.id: (3, 10, None)}) == {}  # the owner simply goes on
    assert queue.get(job.id).state == "active" and queue.get(job.id).bytes_done == 3
    assert queue.claim("second") is None


def test_adding_a_paused_owned_job_again_leaves_it_with_its_owner(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/a", tmp_path, output="a")
    queue.claim("first")
    queue.pause(job.id, wait=0)
    assert queue.add("http://h/a", tmp_path, output="a").id == job.id
    assert queue.get(job.id).state == "queued"
    assert queue.claim("second") is None
    assert queue.heartbeat("first", {job.id: (0, None, None)}) == {}


def test_settle_after_a_pause_releases_a_resumed_job_for_anyone(queue: Queue) -> None:
    job = queue.add("http://h/a")
    queue.claim("first")
    queue.pause(job.id, wait=0)
    assert queue.heartbeat("first", {job.id: (3, 10, None)}) == {job.id: "pause"}  # it stops...
    queue.resume(job.id)  # ...and is resumed before it has settled
    assert queue.claim("second") is None
    assert queue.settle("first", job.id, None, bytes_done=4) == "queued"
    claimed = queue.claim("second")
    assert claimed.id == job.id and claimed.bytes_done == 4


def test_remove_of_a_paused_job_still_being_stopped_leaves_it_to_its_owner(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/a", tmp_path, output="a")
    queue.claim("first")
    queue.pause(job.id, wait=0)
    (tmp_path / "a.part").write_bytes(b"x")
    queue.remove(job.id, delete=True, wait=0)
    assert (tmp_path / "a.part").exists()  # its owner may still be writing it
    assert queue.heartbeat("first", {job.id: (0, None, None)}) == {job.id: "delete"}
    queue.settle("first", job.id, None)
    assert not (tmp_path / "a.part").exists() and queue.get(job.id) is None


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


# -- a finished job asked for again --------------------------------------------------------------

def engine_calls() -> int:
    return sum(len(engine.calls) for engine in FakeEngine.instances)


def test_done_job_with_its_file_stays_done_when_added_again(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/a", str(tmp_path) + os.sep)
    assert run(queue)[job.id].state == "done"
    calls = engine_calls()
    again = queue.add("http://h/a", str(tmp_path) + os.sep, connections=2)
    assert again.id == job.id and again.state == "done" and again.dest == str(tmp_path / "a")
    outcome = run(queue, ids=[job.id])[job.id]
    assert (outcome.state, outcome.skipped, outcome.path, outcome.size) == ("done", True, str(tmp_path / "a"), 10)
    assert engine_calls() == calls  # the engine was not asked


def test_done_job_whose_file_is_gone_is_queued_again(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/a", tmp_path, output="a")
    run(queue)
    (tmp_path / "a").unlink()
    again = queue.add("http://h/a", tmp_path, output="a")
    assert again.id == job.id and again.state == "queued" and again.bytes_done == 0
    calls = engine_calls()
    outcome = run(queue, ids=[job.id])[job.id]
    assert outcome.state == "done" and not outcome.skipped and engine_calls() == calls + 1
    assert (tmp_path / "a").read_bytes() == b"0123456789"


@pytest.mark.parametrize("total,old,new,on_disk,kept", [
    (10, {}, {}, 10, True),
    (10, {}, {"connections": 4, "headers": ["A: b"]}, 10, True),  # how to fetch it does not matter
    (10, {"checksum": "sha256:aa"}, {"checksum": "sha256:aa"}, 10, True),
    (10, {}, {}, None, False),                   # the file is gone
    (10, {}, {}, 9, False),                      # ... or not the file that was finished
    (None, {}, {}, 10, False),                   # no size was recorded
    (10, {}, {"overwrite": True}, 10, False),    # asked to replace it
    (10, {}, {"checksum": "sha256:bb"}, 10, False),  # a check it never passed
    (10, {"checksum": "sha256:aa"}, {"checksum": "sha256:bb"}, 10, False),
])
def test_stays_done_rule(total: int | None, old: dict, new: dict, on_disk: int | None, kept: bool) -> None:
    assert stays_done(total, old, new, on_disk) is kept


# -- adding many -----------------------------------------------------------------------------------

def test_add_many_gives_one_job_per_request(queue: Queue, tmp_path: Path) -> None:
    first = queue.add("http://h/x", tmp_path, output="x")
    batch = [prepare("http://h/a", tmp_path, output="a"), prepare("http://h/x", tmp_path, output="x", connections=3),
             prepare("http://h/b", tmp_path, output="b"), prepare("http://h/a", tmp_path, output="a", connections=2)]
    jobs = queue.add_many(batch)
    assert [j.id for j in jobs] == [2, first.id, 3, 2]
    assert jobs[1].options == {"connections": 3} and queue.get(2).options == {"connections": 2}  # the last ask wins
    assert [j.id for j in queue.list()] == [1, 2, 3]
    assert jobs[0] == queue.get(2) and jobs[2] == queue.get(3)  # what add_many returns is the row


def test_add_many_is_all_or_nothing(queue: Queue, tmp_path: Path) -> None:
    kept = queue.add("http://h/x", tmp_path, output="x")
    queue.pause(kept.id)
    broken = NewJob(("http://h/b",), str(tmp_path / "b"), False, None, {"connections": object()})
    with pytest.raises(TypeError):
        queue.add_many([prepare("http://h/a", tmp_path, output="a"),
                        prepare("http://h/x", tmp_path, output="x", connections=3), broken])
    assert [j.id for j in queue.list()] == [kept.id]
    assert queue.get(kept.id).state == "paused" and queue.get(kept.id).options == {}


def test_add_stream_writes_a_chunk_at_a_time_in_one_transaction(queue: Queue, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream longer than a chunk: ids in the order asked, the same request asked in two chunks
    is one job (the last ask wins), and nothing is visible to others before the end."""
    monkeypatch.setattr(store, "CHUNK", 3)
    seen_by_others = []

    def jobs() -> Any:
        for i in range(7):
            if i == 5:
                with Queue(queue.home) as other:
                    seen_by_others.append(len(other.list()))
            yield prepare(f"http://h/{i % 4}", tmp_path, output=f"f{i % 4}", connections=i + 1)

    ids = queue.add_stream(jobs())
    assert list(ids) == [1, 2, 3, 4, 1, 2, 3] and seen_by_others == [0]
    assert [(j.id, j.options["connections"]) for j in queue.list()] == [(1, 5), (2, 6), (3, 7), (4, 4)]


def test_add_stream_is_all_or_nothing(queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream raises after several chunks were written (a bad line at the end of a manifest):
    nothing of it stays, and what was in the queue before is untouched."""
    monkeypatch.setattr(store, "CHUNK", 2)
    kept = queue.add("http://h/0", tmp_path, output="f0")
    queue.pause(kept.id)

    def jobs() -> Any:
        for i in range(6):
            yield prepare(f"http://h/{i}", tmp_path, output=f"f{i}", connections=2)
        raise InvalidInputError("m.txt:99: bad line")

    with pytest.raises(InvalidInputError):
        queue.add_stream(jobs())
    assert [(j.id, j.state, j.options) for j in queue.list()] == [(kept.id, "paused", {})]
    assert list(queue.add_stream(iter([prepare("http://h/9", tmp_path, output="f9")]))) == [kept.id + 1]  # not even an id was used


@pytest.mark.slow
def test_a_long_manifest_is_checked_and_added_in_flat_memory(tmp_path: Path) -> None:
    """`add --later -i` of 200,000 entries: peak RSS stays far under 100 MB (it grew by about
    1.6 KB per entry when the manifest was read whole, 330 MB here), the ids come out in order,
    and the same manifest with a bad last line adds nothing at all (exit 2)."""
    count = 200_000
    manifest, bad = tmp_path / "m.txt", tmp_path / "bad.txt"
    with open(manifest, "w") as out:
        out.writelines(f"http://h/f{i}\n  out=f{i}\n" for i in range(count))
    bad.write_bytes(manifest.read_bytes() + b"http://h/last\n  colour=red\n")
    home = str(tmp_path / "home")
    status, _, peak = dlman_peak(["--home", home, "add", "--later", "-d", "dl", "-i", str(bad)], tmp_path)
    assert status == 2 and peak < 100, peak
    with Queue(home) as queue:
        assert queue.list() == []
    status, printed, peak = dlman_peak(["--home", home, "add", "--later", "-d", "dl", "-i", str(manifest)], tmp_path)
    assert status == 0 and peak < 100, peak
    assert printed.split() == [str(i).encode() for i in range(1, count + 1)]
    with Queue(home) as queue:
        assert queue.get(count).dest == str(tmp_path / "dl" / f"f{count - 1}")


# -- listing ----------------------------------------------------------------------------------------

def test_iter_jobs_streams_page_by_page(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_package, "PAGE", 3)
    for i in range(10):
        queue.add(f"http://h/{i}")
    queue.pause(4, 8)
    stream = queue.iter_jobs()
    assert iter(stream) is stream  # an iterator, not a list
    first = [next(stream) for _ in range(4)]
    queue.add("http://h/late")  # a writer between pages is neither blocked nor missed
    assert [j.id for j in first + list(stream)] == list(range(1, 12))
    assert [j.id for j in queue.iter_jobs("paused")] == [4, 8]
    assert [j.id for j in queue.list("queued")] == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    with pytest.raises(InvalidInputError):
        queue.iter_jobs("bogus")  # at once, not at the first row


# -- the database ------------------------------------------------------------------------------------

def plan(queue: Queue, sql: str, *params: Any) -> list[str]:
    with closing(sqlite3.connect(queue.path)) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize("sql,among", [
    (ownership.CLAIM_NEXT, False), (ownership.CLAIM_AMONG, True), (ownership.OWNED, False), (ownership.OWNED, True),
    (ownership.ORPHANS, False),
])
def test_claiming_reads_through_indexes(queue: Queue, sql: str, among: bool) -> None:
    """No full-table scan per claim: its cost does not grow with the queue's length."""
    queue.add_many([prepare(f"http://h/{i}") for i in range(50)])
    queue.move(40, 0)
    for _ in range(5):
        queue.claim("me")
    query, params = sql, []
    if "{among}" in sql:
        condition, params = ownership._among([1, 2, 3] if among else None)
        query = sql.format(among=condition)
    elif among:
        params = ["[1, 2, 3]"]
    if "LIMIT ?" in sql:
        params = [*params, 4]
    steps = [step for step in plan(queue, query, *params) if "jobs" in step.split()]
    assert steps and all(step.startswith("SEARCH jobs USING") for step in steps), steps


@pytest.mark.parametrize("sql,params,ranged", [
    (ownership.CLAIM_NEXT, [4], False),
    (store.line_query(["queued"]), [2.5, 3, 500], True),
    (store.line_query(["queued", "paused"]), [2.5, 3, 500], True),
    (store._OTHERS, [7, 2, 10], False),
    (store._COUNT_BEFORE, ["queued", 2.5, 3], True),
])
def test_the_line_is_read_in_order_through_its_index(queue: Queue, sql: str, params: list[Any], ranged: bool) -> None:
    """Claims and pages read the queued (and paused) rows already in line order from the index on
    (state, place): no scan of the table, no sort of every queued row for each claim or page."""
    queue.add_many([prepare(f"http://h/{i}") for i in range(50)])
    queue.move(40, 0)
    queue.pause(3)
    steps = plan(queue, sql, *params)
    assert not any("TEMP B-TREE" in step or step.startswith("SCAN jobs") for step in steps), steps
    reads = [step for step in steps if "jobs" in step.split()]
    assert reads and all(step.startswith("SEARCH jobs USING INDEX jobs_line (state=?") for step in reads), steps
    assert all(("<expr>" in step) == ranged for step in reads), steps  # a page starts where the last one ended


def test_a_version_2_database_is_migrated_and_its_line_is_the_order_of_addition(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with closing(sqlite3.connect(home / "queue.db")) as conn, conn:
        for script in store.MIGRATIONS[:2]:
            for statement in store._statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        for i, state in enumerate(["queued", "paused", "done", "queued", "queued", "failed"], start=1):
            conn.execute("INSERT INTO jobs (urls, dest, dest_is_dir, request, options, state, created, updated)"
                         " VALUES (?, ?, 0, ?, '{}', ?, 0, 0)", (f'["http://h/{i}"]', f"/d/{i}", f"r{i}", state))
    with Queue(home) as queue:
        assert peek(queue, "PRAGMA user_version")[0] == store.VERSION == 3
        indexes = {row[0] for row in queue._store.rows("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "jobs_line" in indexes and "jobs_state" not in indexes
        assert peek(queue, "SELECT count(*) FROM jobs WHERE rank IS NOT NULL")[0] == 0
        assert [job.id for job in queue.waiting()] == [1, 2, 4, 5]
        assert queue.move(5, 0) == 0
        assert [job.id for job in queue.waiting()] == [5, 1, 2, 4]
        assert [job.id for job in queue.add_many([prepare("http://h/7"), prepare("http://h/8")])] == [7, 8]
        assert [job.id for job in queue.list("queued")] == [5, 1, 4, 7, 8]
        assert [queue.claim("me").id for _ in range(3)] == [5, 1, 4]
    with Queue(home) as again:  # already current: opening it changes nothing
        assert [job.id for job in again.waiting()] == [2, 7, 8]


def test_a_database_from_before_versions_is_migrated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with closing(sqlite3.connect(home / "queue.db")) as conn, conn:
        for statement in store._statements(store.MIGRATIONS[0]):
            conn.execute(statement)
        conn.execute("INSERT INTO jobs (urls, dest, dest_is_dir, request, options, state, owner, owner_pid, owner_host,"
                     " heartbeat, created, updated) VALUES ('[\"http://h/a\"]', '/d/a', 0, 'r', '{}', 'active', 'old',"
                     " 1, 'elsewhere', 0, 0, 0)")
    with Queue(home) as queue:
        assert peek(queue, "PRAGMA user_version")[0] == store.VERSION
        assert queue.get(1).state == "active"
        assert queue.claim("new").id == 1  # its owner's heartbeat is long stale
        assert peek(queue, "SELECT owner_start, owner_space FROM jobs")[0] == this_process().start
    with Queue(home) as again:  # already current: opening it changes nothing
        assert again.get(1).state == "active"


# -- the runner --------------------------------------------------------------------------------------

def test_runner_goes_on_when_paused_and_resumed_before_its_next_tick(queue: Queue, tmp_path: Path) -> None:
    job = queue.add("http://h/slow", tmp_path, output="s")

    async def scenario() -> None:
        task = asyncio.create_task(queue.arun(1, engine_factory=FakeEngine))
        await _until(lambda: queue.get(job.id).bytes_done == 5)
        calls = engine_calls()
        poke(queue, "UPDATE jobs SET state = 'queued' WHERE id = ?", job.id)  # paused, then resumed
        assert queue.claim("other") is None
        await _until(lambda: queue.get(job.id).state == "active")  # the owner's heartbeat took it back
        assert queue.claim("other") is None and not task.done() and engine_calls() == calls
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert queue.get(job.id).state == "queued"


def test_heartbeats_do_not_wait_behind_busy_disk_threads(queue: Queue, tmp_path: Path) -> None:
    """Every thread of asyncio's default executor (where file writes, fsyncs and digests go) is
    busy, yet the runner still beats, hears of a pause and settles: the database has its own."""
    job = queue.add("http://h/slow", tmp_path, output="s")

    async def scenario() -> dict[int, Outcome]:
        task = asyncio.create_task(queue.arun(1, engine_factory=FakeEngine))
        await _until(lambda: queue.get(job.id).bytes_done == 5)
        loop = asyncio.get_running_loop()
        release = threading.Event()
        blockers = [loop.run_in_executor(None, release.wait) for _ in range(64)]
        try:
            queue.pause(job.id, wait=0)
            done, _ = await asyncio.wait({task}, timeout=10 * TICK)
        finally:
            release.set()
            await asyncio.gather(*blockers)
        assert done, "the runner did not hear of the pause while the default executor was busy"
        return task.result()

    assert asyncio.run(scenario())[job.id].state == "paused"
    assert queue.get(job.id).state == "paused"


class CountingQueue(Queue):
    """Records how many ids each claim and watch is handed."""

    handed: list[int] = []

    def exchange(self, owner: str, endings: Any, count: int, ids: Any = None) -> Any:
        self.handed.append(len(ids) if ids is not None else 0)
        return super().exchange(owner, endings, count, ids)

    def get_many(self, job_ids: Any) -> Any:
        job_ids = list(job_ids)
        self.handed.append(len(job_ids))
        return super().get_many(job_ids)


def test_a_long_list_of_ids_costs_nothing_more_per_job(tmp_path: Path) -> None:
    """`add -i` of a long manifest: each claim looks at a window of ids, not at all of them."""
    with CountingQueue(tmp_path / "home") as queue:
        ids = [j.id for j in queue.add_many([prepare(f"http://h/{i}", tmp_path, output=f"f{i}") for i in range(1500)])]
        queue.handed.clear()
        began = time.monotonic()
        outcomes = run(queue, jobs=4, ids=ids)
        took = time.monotonic() - began
    assert sorted(outcomes) == ids and {o.state for o in outcomes.values()} == {"done"}
    assert max(queue.handed) <= WINDOW
    assert took < 1500 * 0.01, took  # offering every id to every claim took 47 ms per job at 1,000


def test_a_claim_cut_short_by_cancel_gives_the_job_back(tmp_path: Path) -> None:
    """Ctrl-C while a claim is under way in the database thread: the claim completes there
    anyway, and a job left owned by this live process would be stranded, so it is given back."""
    entered, release, claimed = threading.Event(), threading.Event(), threading.Event()

    class SlowClaim(Queue):
        def exchange(self, owner: str, endings: Any, count: int, ids: Any = None) -> Any:
            if not count:
                return super().exchange(owner, endings, count, ids)
            entered.set()
            release.wait(10)
            try:
                return super().exchange(owner, endings, count, ids)
            finally:
                claimed.set()

    with SlowClaim(tmp_path / "home") as queue:
        job = queue.add("http://h/a", tmp_path, output="a")

        async def scenario() -> None:
            task = asyncio.create_task(queue.arun(1, engine_factory=FakeEngine))
            await _until(entered.is_set)
            task.cancel()
            await asyncio.sleep(0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        assert claimed.wait(10)
        assert queue.get(job.id).state == "queued"
        assert Queue.claim(queue, "next").id == job.id


def test_a_freed_slot_is_filled_at_once(queue: Queue, tmp_path: Path) -> None:
    """One job at a time through forty quick ones: each is claimed as soon as the one before it
    is settled, not after waiting out a tick (which would take 40 ticks, 20 s)."""
    queue.add_many([prepare(f"http://h/{i}", tmp_path, output=f"f{i}") for i in range(40)])
    began = time.monotonic()
    outcomes = run(queue, jobs=1)
    took = time.monotonic() - began
    assert len(outcomes) == 40 and {o.state for o in outcomes.values()} == {"done"}
    assert took < 10 * TICK, took


class CountingStore(store.Store):
    """Counts write transactions."""

    transactions = 0

    def transaction(self) -> Any:
        CountingStore.transactions += 1
        return super().transaction()


def test_a_batch_of_jobs_costs_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settling the jobs that ended and claiming their successors is one transaction and one trip
    to the database thread per batch, not two per job: with eight slots and instant downloads,
    96 jobs take two dozen at most (waves of jobs ending while the last exchange was under way)."""
    monkeypatch.setattr(queue_package, "Store", CountingStore)
    trips: list[tuple[str, int]] = []
    real_db = runner_module.Runner._db

    async def counted(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append((method.__name__, args[2] if method.__name__ == "exchange" else 0))
        return await real_db(self, method, *args, **kwargs)

    monkeypatch.setattr(runner_module.Runner, "_db", counted)
    with Queue(tmp_path / "home") as queue:
        queue.add_many([prepare(f"http://h/{i}", tmp_path, output=f"f{i}") for i in range(96)])
        CountingStore.transactions = 0
        outcomes = run(queue, jobs=8)
    assert len(outcomes) == 96 and {o.state for o in outcomes.values()} == {"done"}
    assert CountingStore.transactions <= 96 // 4 + 2, CountingStore.transactions  # two per job before
    assert len(trips) <= 96 // 4 + 2, trips
    assert ("exchange", 8) in trips  # every free slot claimed in one go


def test_claim_many_takes_the_gone_owners_jobs_then_the_oldest(queue: Queue) -> None:
    jobs = queue.add_many([prepare(f"http://h/{i}") for i in range(6)])
    queue.claim("old-owner", ids=[jobs[4].id])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has just ended
    gone.wait()
    poke(queue, "UPDATE jobs SET owner_pid = ? WHERE id = ?", gone.pid, jobs[4].id)
    with queue._store.transaction() as conn:
        taken = ownership.claim_many(conn, "me", 3)
    assert [job.id for job in taken] == [jobs[4].id, jobs[0].id, jobs[1].id]
    assert {job.state for job in taken} == {"active"} and all(job.owner_pid == os.getpid() for job in taken)
    with queue._store.transaction() as conn:
        assert [job.id for job in ownership.claim_many(conn, "me", 5, ids=[jobs[3].id, jobs[1].id])] == [jobs[3].id]
        assert [job.id for job in ownership.claim_many(conn, "me", 5)] == [jobs[2].id, jobs[5].id]
        assert ownership.claim_many(conn, "me", 5) == []


# -- the waiting line --------------------------------------------------------------------------------

@pytest.mark.parametrize("position,count,offset,how,expected", [
    (2, 5, 0, "set", 0), (2, 5, 3, "set", 3), (2, 5, 4, "set", 4),
    (2, 5, -1, "set", 0), (2, 5, 5, "set", 4), (2, 5, 99, "set", 4),    # before the front, past the end
    (2, 5, 0, "cur", 2), (2, 5, -1, "cur", 1), (2, 5, 1, "cur", 3),
    (2, 5, -3, "cur", 0), (2, 5, 3, "cur", 4), (0, 5, -1, "cur", 0), (4, 5, 1, "cur", 4),
    (2, 5, 0, "end", 4), (2, 5, -1, "end", 3), (2, 5, -4, "end", 0),
    (2, 5, -99, "end", 0), (2, 5, 1, "end", 4),
    (0, 1, 0, "set", 0), (0, 1, 5, "set", 0), (0, 1, -5, "cur", 0), (0, 1, 3, "cur", 0), (0, 1, -2, "end", 0),
])
def test_line_position_follows_aria2s_change_position(position: int, count: int, offset: int, how: str,
                                                      expected: int) -> None:
    assert line_position(position, count, offset, how) == expected


def test_line_position_refuses_an_unknown_way_to_move() -> None:
    with pytest.raises(InvalidInputError, match="unknown way to move 'POS_SET'"):
        line_position(0, 3, 1, "POS_SET")


def test_spread_places_keys_strictly_between_or_says_there_is_no_room() -> None:
    assert spread(1.0, 2.0, 1) == [1.5]
    assert spread(0.0, 4.0, 3) == [1.0, 2.0, 3.0]
    assert spread(None, 5.0, 3) == [2.0, 3.0, 4.0]  # nothing before: whole steps below the next key
    assert spread(None, -7.5, 1) == [-8.5]
    assert spread(3.0, 9.0, 0) == []
    assert spread(1.0, math.nextafter(1.0, 2.0), 1) is None  # adjacent floats: no room
    assert spread(1.0, 1.0 + 2e-16, 2) is None
    assert spread(4.0, 4.0, 1) is None  # two jobs tied at one key (an id and a place given before)
    assert spread(1e6, 1e6 + 1e-9, 1) == [1e6 + 5e-10]


def ids(jobs: Any) -> list[int]:
    return [job.id for job in jobs]


def test_a_moved_job_is_claimed_first_and_paused_jobs_keep_their_place(queue: Queue) -> None:
    queue.add_many([prepare(f"http://h/{i}") for i in range(1, 7)])
    assert queue.move(5, 0) == 0
    assert ids(queue.waiting()) == ids(queue.list("queued")) == [5, 1, 2, 3, 4, 6]
    assert ids(queue.list()) == [1, 2, 3, 4, 5, 6]  # the whole queue stays in id order
    assert queue.move(1, 0, "end") == 5
    assert queue.move(6, -1, "cur") == 3
    assert queue.move(2, -2, "end") == 3
    assert ids(queue.waiting()) == [5, 3, 6, 2, 4, 1]
    queue.pause(6)
    assert ids(queue.waiting()) == [5, 3, 6, 2, 4, 1] and ids(queue.list("paused")) == [6]
    assert queue.move(4, 1, "cur") == 5  # positions count the paused job: the line is aria2's waiting queue
    assert queue.move(4, 2) == 2
    assert ids(queue.waiting()) == [5, 3, 4, 6, 2, 1]
    assert queue.claim("me").id == 5
    with queue._store.transaction() as conn:
        assert ids(ownership.claim_many(conn, "me", 2)) == [3, 4]
        assert ids(ownership.claim_many(conn, "me", 5, ids=[1, 2, 6])) == [2, 1]  # among ids too, in line order
    queue.resume(6)
    assert queue.claim("me").id == 6


def test_only_waiting_jobs_move(queue: Queue) -> None:
    only = queue.add("http://h/a")
    assert queue.move(only.id, 5) == queue.move(only.id, -5, "cur") == queue.move(only.id, 0, "end") == 0
    queue.claim("me")
    with pytest.raises(InvalidInputError, match="job 1 is active"):
        queue.move(only.id, 0)
    with pytest.raises(InvalidInputError, match="no job with id 99"):
        queue.move(99, 0)
    with pytest.raises(InvalidInputError, match="unknown way to move"):
        queue.move(only.id, 0, "POS_SET")


def test_jobs_added_after_moves_join_the_end(queue: Queue) -> None:
    queue.add_many([prepare(f"http://h/{i}") for i in range(1, 4)])
    for _ in range(200):  # far more halvings of the room before the next id than a double holds
        queue.move(1, 0, "end")
        queue.move(2, 0, "end")
    assert ids(queue.waiting()) == [3, 1, 2]
    new = queue.add("http://h/4")
    assert ids(queue.waiting()) == [3, 1, 2, new.id]
    assert queue.move(3, 0, "end") == 3
    assert ids(queue.add_many([prepare("http://h/5"), prepare("http://h/6")])) == [5, 6]
    assert ids(queue.waiting()) == [1, 2, 4, 3, 5, 6]


def test_moves_match_a_list_model_even_when_floats_run_out(queue: Queue) -> None:
    """Random moves (and adds) against a Python list: the same line every time. Moving two jobs
    into one gap again and again exhausts the floats between its neighbours: a stretch around it
    is spread out again, a few rows, not the whole line."""
    queue.add_many([prepare(f"http://h/{i}") for i in range(300)])
    model = list(range(1, 301))

    def move(job_id: int, offset: int, how: str) -> None:
        here = model.index(job_id)
        target = min(max({"set": offset, "cur": here + offset, "end": len(model) - 1 + offset}[how], 0),
                     len(model) - 1)
        assert queue.move(job_id, offset, how) == target
        model.insert(target, model.pop(here))

    for i in range(400):
        move(150 if i % 2 else 151, 100, "set")
        move(7, 0, "end")
    assert ids(queue.waiting()) == model
    assert peek(queue, "SELECT count(rank) FROM jobs")[0] < 40
    rng = random.Random(7)
    for _ in range(600):
        if rng.random() < 0.05:
            model.append(queue.add(f"http://h/new{len(model)}").id)
        else:
            move(rng.choice(model), rng.randint(-20, 20), rng.choice(["set", "cur", "end"]))
    assert ids(queue.waiting()) == model
    assert ids(queue.iter_jobs("queued")) == model


def test_the_line_pages_like_the_rest(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_package, "PAGE", 3)
    queue.add_many([prepare(f"http://h/{i}") for i in range(1, 11)])
    queue.move(9, 0)
    queue.move(2, 0, "end")
    queue.pause(4, 9)
    stream = queue.iter_waiting()
    first = [next(stream) for _ in range(4)]
    queue.add("http://h/late")  # a writer between pages is neither blocked nor missed
    assert ids(first + list(stream)) == [9, 1, 3, 4, 5, 6, 7, 8, 10, 2, 11]
    assert ids(queue.iter_jobs("queued")) == [1, 3, 5, 6, 7, 8, 10, 2, 11]
    assert ids(queue.iter_jobs("paused")) == [9, 4]


def _add_one_at_a_time(home: str, count: int, errors: list[BaseException]) -> None:
    try:
        with Queue(home) as other:
            for i in range(count):
                other.add(f"http://h/added{i}")
    except BaseException as error:  # noqa: BLE001 - reported by the test
        errors.append(error)


def test_moves_and_adds_at_once(tmp_path: Path) -> None:
    """Another connection adds jobs one transaction at a time while this one moves jobs to the
    front and to the end: every add lands, in the order made, and the moves hold."""
    home = str(tmp_path / "home")
    with Queue(home) as queue:
        first = ids(queue.add_many([prepare(f"http://h/{i}") for i in range(20)]))
        errors: list[BaseException] = []
        adder = threading.Thread(target=_add_one_at_a_time, args=(home, 150, errors))
        adder.start()
        moves = 0
        while adder.is_alive() or moves < 50:
            assert queue.move(first[moves % 20], 0) == 0
            queue.move(first[(moves + 7) % 20], 0, "end")
            moves += 1
        adder.join()
        assert not errors, errors
        assert queue.move(first[3], 0) == 0
        assert queue.move(first[4], 0, "end") == 169
        line = ids(queue.waiting())
        added = [job_id for job_id in line if job_id not in first]
        assert len(line) == 170 and line[0] == first[3] and line[-1] == first[4]
        assert added == sorted(added) and len(added) == 150
        assert [queue.claim("me").id for _ in range(2)] == line[:2]
