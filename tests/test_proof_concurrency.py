"""Proof under failure at the queue level: many jobs, three runners, and a fourth process meddling.

Jobs are enqueued with ``dlman add --later`` (one batch before the runners start, one while they
run), three ``dlman run -j 3`` processes share one ``--home``, and meanwhile a controlling process
pauses, resumes and removes jobs, queued and active, with and without ``--delete``. Every file is
small (under the engine's minimum segment, and fetched with ``-c 1``), so each download is one
ranged GET and the server's counters account for every byte exactly:

* a job nobody touched was asked for once (``Range: bytes=0-``) and served exactly its size;
* a job paused while active was served ``B1`` bytes before it stopped, saved ``S <= B1`` of them,
  and its resume asked for ``bytes=S-`` (with If-Range) and got exactly ``size - S`` more;
* a removed job got nothing more after its removal, a job removed while queued got nothing at all;
* a job paused and resumed at once while active (before its owner noticed, most likely) was never
  fetched by two runners: at most one more request, and at most a socket's worth served twice;
* the server never saw two connections for one file at once (two owners would show as two).

A thread samples the queue every few milliseconds through ``dlman.Queue`` and another runs
``dlman list --json`` in a loop; every transition they observe must be legal, and no process may
print a traceback or "database is locked".
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import dlman
from helpers import saved_bytes, wait_for

KiB = 1024
GONE = "gone"  # a job no longer listed (removed)

# The direct transitions a job may make; sampling can miss intermediate states, so an observed
# step is legal when the later state is reachable from the earlier one through these.
EDGES: dict[str, set[str]] = {
    "queued": {"active", "paused", GONE},
    "active": {"done", "failed", "queued", "paused", GONE},
    "paused": {"queued", GONE},
    "failed": {"queued", GONE},
    "done": {GONE},
    GONE: set(),
}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in EDGES[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


REACH = {state: reachable(state) for state in EDGES}

# What a runner may print on stderr (no bars: stderr is a pipe), and nothing else.
RUNNER_LINE = re.compile(r"^(done \S+ \([0-9.]+ (B|KiB|MiB)(, already complete)?\)"
                         r"|paused job \d+ \(\S+\)|removed job \d+ \(\S+\))$")


@dataclass
class Call:
    """One finished dlman process, kept so every stderr can be checked at the end."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Fleet:
    """Runs dlman processes against one home and remembers all of them."""

    home: Path
    cwd: Path
    env: dict[str, str]
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dlman", "--home", str(self.home), *args]

    def run(self, *args: str, timeout: float = 30) -> Call:
        began = time.monotonic()
        done = subprocess.run(self.argv(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        call = Call(args, done.returncode, done.stdout, done.stderr, time.monotonic() - began)
        with self.lock:
            self.calls.append(call)
        return call

    def start(self, *args: str) -> tuple[subprocess.Popen[str], float]:
        process = subprocess.Popen(self.argv(*args), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        return process, time.monotonic()

    def finish(self, started: tuple[subprocess.Popen[str], float], timeout: float) -> Call:
        process, began = started
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise AssertionError(f"dlman {' '.join(process.args[5:])} did not end within {timeout}s:\n{stderr}")
        call = Call(tuple(process.args[5:]), process.returncode, stdout, stderr, time.monotonic() - began)
        with self.lock:
            self.calls.append(call)
        return call

    def jobs(self) -> dict[int, dict[str, Any]]:
        call = self.run("list", "--json")
        assert call.returncode == 0, call.stderr
        return {job["id"]: job for job in json.loads(call.stdout)}


class Sampler(threading.Thread):
    """Samples every job's (state, bytes_done) as fast as it can, for the transition checks."""

    def __init__(self, sample: Any, interval: float) -> None:
        super().__init__(daemon=True)
        self.sample = sample
        self.interval = interval
        self.stop = threading.Event()
        self.snapshots: list[dict[int, tuple[str, int]]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.snapshots.append(self.sample())
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.errors.append(error)
                return
            self.stop.wait(self.interval)

    def halt(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.is_alive()


def check_transitions(snapshots: list[dict[int, tuple[str, int]]], ids: Iterable[int],
                      untouched: set[int]) -> int:
    """Every observed change is legal; untouched jobs only go queued -> active -> done; returns #changes."""
    changes = 0
    for job_id in ids:
        history: list[tuple[str, int]] = []
        for snapshot in snapshots:
            state, done = snapshot.get(job_id, (GONE, -1))
            if history and history[-1][0] == GONE and state == GONE:
                continue
            if not history and state == GONE:
                continue  # not added yet when this sample was taken
            if history and (state, done) == history[-1]:
                continue
            history.append((state, done))
        states = [s for s, _ in history]
        for (before, done_before), (after, done_after) in zip(history, history[1:]):
            if before != after:
                changes += 1
                assert after in REACH[before], f"job {job_id}: illegal transition {before} -> {after} in {states}"
            if after != GONE:
                assert done_after >= done_before, f"job {job_id}: bytes_done went back in {history}"
        if job_id in untouched:
            compact = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
            order = ["queued", "active", "done"]
            positions = [order.index(s) if s in order else -1 for s in compact]
            assert -1 not in positions and positions == sorted(positions) and compact[-1] == "done", \
                f"untouched job {job_id} went {compact}"
    return changes


def assert_clean(calls: list[Call]) -> None:
    for call in calls:
        text = call.stdout + call.stderr
        assert "database is locked" not in text, (call.args, text)
        assert "Traceback" not in text, (call.args, text)
        assert "error" not in call.stderr.lower(), (call.args, call.stderr)


def range_start(value: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", value or "")
    assert match, value
    return int(match.group(1))


@dataclass
class Plan:
    """Which job gets which treatment, by id (a fresh home numbers jobs 1, 2, ...)."""

    total: int
    first_batch: int
    pause_active_resume_now: int = 1  # paused while active, then `dlman resume` in the foreground
    pause_active_resume_end: int = 2  # paused while active, resumed after the runners ended
    remove_active: int = 3  # removed while active, partial data kept
    remove_active_delete: int = 4  # removed while active with --delete
    remove_done_delete: int = 5  # removed with --delete once done: the file stays
    pause_resume_active: int = 6  # paused and at once resumed while active, through the API (no wait)

    @property
    def remove_queued(self) -> int:
        return self.total - 5

    @property
    def remove_queued_delete(self) -> int:
        return self.total - 4

    @property
    def pause_queued_resume_now(self) -> list[int]:
        return [self.total - 3, self.total - 2]

    @property
    def pause_queued_resume_end(self) -> list[int]:
        return [self.total - 1, self.total]

    @property
    def slow(self) -> list[int]:
        return [self.pause_active_resume_now, self.pause_active_resume_end, self.remove_active,
                self.remove_active_delete]

    @property
    def removed(self) -> set[int]:
        return {self.remove_active, self.remove_active_delete, self.remove_done_delete, self.remove_queued,
                self.remove_queued_delete}

    @property
    def paused(self) -> set[int]:
        return {self.pause_active_resume_now, self.pause_active_resume_end, *self.pause_queued_resume_now,
                *self.pause_queued_resume_end}


SLOW_RATE = 64 * KiB  # the four victims of active pause/remove: 512 KiB would take 8 s
SLOW_SIZE = 512 * KiB
WASTE_LIMIT = 64 * KiB  # bytes served but not saved when an active job is paused (socket buffers)


def scenario(server: Any, make_data: Any, tmp_path: Path, total: int, runners: int, first_batch: int) -> None:
    plan = Plan(total, first_batch)
    rng = random.Random(total * 7919 + runners)
    home, out = tmp_path / "home", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="*", PYTHONUNBUFFERED="1")
    env.pop("DLMAN_HOME", None)
    fleet = Fleet(home, tmp_path, env)

    resources = {}
    for job_id in range(1, total + 1):
        if job_id in plan.slow or job_id == plan.pause_resume_active:
            size, rate = SLOW_SIZE, SLOW_RATE
        else:
            size = rng.randrange(256 * KiB, 512 * KiB + 1)
            rate = int(size / rng.uniform(0.3, 0.9))
        resources[job_id] = server.add(f"/f{job_id:02d}", make_data(size, seed=1000 + job_id), throttle=rate,
                                       auto_etag=True)
    url = {job_id: server.url(res.path) for job_id, res in resources.items()}

    def add_batch(ids: list[int], *options: str) -> None:
        call = fleet.run("add", "--later", "-c", "1", "-d", "out", *options, *(url[i] for i in ids))
        assert call.returncode == 0, call.stderr
        assert [int(x) for x in call.stdout.split()] == ids, call.stdout

    add_batch(list(range(1, first_batch + 1)))

    with dlman.Queue(home) as probe:
        def sample() -> dict[int, tuple[str, int]]:
            return {job.id: (job.state, job.bytes_done) for job in probe.list()}

        sampler = Sampler(sample, 0.005)
        lister_snapshots: list[dict[int, tuple[str, int]]] = []
        lister_stop = threading.Event()

        def lister() -> None:
            while not lister_stop.is_set():
                call = fleet.run("list", "--json")
                if call.returncode == 0:
                    lister_snapshots.append({j["id"]: (j["state"], j["bytes_done"]) for j in json.loads(call.stdout)})

        lister_thread = threading.Thread(target=lister, daemon=True)
        sampler.start()
        lister_thread.start()
        began = time.monotonic()
        running: list[tuple[subprocess.Popen[str], float]] = []
        try:
            running += [fleet.start("run", "-j", "3") for _ in range(runners)]
            # The second batch arrives while the runners work: they must pick it up.
            add_batch(list(range(first_batch + 1, total + 1)), "--retries", "3", "--timeout", "20")

            # Queued jobs: pause four, remove two (one with --delete), all in parallel.
            queued_actions = [
                fleet.start("pause", *map(str, plan.pause_queued_resume_now + plan.pause_queued_resume_end)),
                fleet.start("remove", str(plan.remove_queued)),
                fleet.start("remove", "--delete", str(plan.remove_queued_delete)),
            ]
            for started in queued_actions:
                call = fleet.finish(started, 20)
                assert call.returncode == 0, (call.args, call.stderr)

            # Active jobs: once the four slow ones are well under way, act on all four at once.
            def under_way() -> bool:
                states = sample()
                return all(states.get(i, ("", 0))[0] == "active" and resources[i].bytes_served > 150 * KiB
                           for i in [*plan.slow, plan.pause_resume_active])

            wait_for(under_way, timeout=20, what="the slow jobs to be under way")
            # Paused and resumed before its owner's next heartbeat, most likely: the job stays with
            # its owner (no other runner may claim it), which goes on or, if it saw the pause, lets
            # it go and it is claimed again; never two downloads at once.
            probe.pause(plan.pause_resume_active, wait=0)
            probe.resume(plan.pause_resume_active)
            acted = time.monotonic()
            active_actions = {
                plan.pause_active_resume_now: fleet.start("pause", str(plan.pause_active_resume_now)),
                plan.pause_active_resume_end: fleet.start("pause", str(plan.pause_active_resume_end)),
                plan.remove_active: fleet.start("remove", str(plan.remove_active)),
                plan.remove_active_delete: fleet.start("remove", "--delete", str(plan.remove_active_delete)),
            }
            for job_id, started in active_actions.items():
                call = fleet.finish(started, 20)
                assert call.returncode == 0, (call.args, call.stderr)
                verb = "paused" if call.args[0] == "pause" else "removed"
                assert call.stderr.strip() == f"{verb} job {job_id}", call.stderr
            # "an active one stops within about 2 s": the commands returned once it had stopped
            # (three parallel Python start-ups on a loaded machine cost the rest).
            assert time.monotonic() - acted < 6.0

            # What each victim had been served when it stopped, once the server's handler is gone.
            stopped: dict[int, tuple[int, int]] = {}
            for job_id in plan.slow:
                res = resources[job_id]
                wait_for(lambda: res.active == 0, timeout=10, what=f"the server to see job {job_id} stop")
                stopped[job_id] = (res.bytes_served, len(res.requests))
            for res in resources.values():
                res.throttle = max(res.throttle or 0, 512 * KiB)  # the rest may go faster now
            paused_rows = fleet.jobs()
            saved = {i: saved_bytes(out / f"f{i:02d}") for i in plan.slow}

            # Resume two queued-paused jobs for the runners, and one active-paused in the foreground.
            call = fleet.run("resume", "--later", *map(str, plan.pause_queued_resume_now))
            assert call.returncode == 0, call.stderr
            foreground = fleet.start("resume", str(plan.pause_active_resume_now))
            running.append(foreground)

            results = [fleet.finish(r, 60) for r in running[:runners]]
            resumed = fleet.finish(foreground, 60)
            assert resumed.returncode == 0, resumed.stderr
        finally:
            lister_stop.set()
            lister_thread.join(30)
            for process, _ in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        # The runners are done; nothing touched the job paused for the end meanwhile.
        held = plan.pause_active_resume_end
        assert (resources[held].bytes_served, len(resources[held].requests)) == stopped[held]
        assert all(resources[i].bytes_served == 0 for i in plan.pause_queued_resume_end)

        # A finished file survives `remove --delete`; then resume the rest and run them.
        done_file = out / f"f{plan.remove_done_delete:02d}"
        assert done_file.read_bytes() == resources[plan.remove_done_delete].data
        call = fleet.run("remove", "--delete", str(plan.remove_done_delete))
        assert call.returncode == 0, call.stderr
        assert done_file.read_bytes() == resources[plan.remove_done_delete].data
        call = fleet.run("resume", "--later", str(held), *map(str, plan.pause_queued_resume_end))
        assert call.returncode == 0, call.stderr
        final = fleet.run("run", "-j", "3", timeout=60)
        assert final.returncode == 0, final.stderr
        elapsed = time.monotonic() - began
        sampler.halt()

    # -- the end state -------------------------------------------------------------------------------
    expected = set(range(1, total + 1)) - plan.removed
    rows = fleet.jobs()
    assert set(rows) == expected, f"lost or extra jobs: {sorted(set(rows) ^ expected)}"
    assert {i: r["state"] for i, r in rows.items() if r["state"] != "done"} == {}
    for job_id in expected:
        path = out / f"f{job_id:02d}"
        assert rows[job_id]["dest"] == str(path)
        assert rows[job_id]["bytes_done"] == rows[job_id]["total_bytes"] == len(resources[job_id].data)
        assert path.read_bytes() == resources[job_id].data, f"job {job_id}: wrong bytes"
    leftovers = {p.name for p in out.iterdir()} - {f"f{i:02d}" for i in expected | {plan.remove_done_delete}}
    keep = plan.remove_active
    assert leftovers == {f"f{keep:02d}.part", f"f{keep:02d}.part.state"}, leftovers
    assert 0 < saved_bytes(out / f"f{keep:02d}") <= stopped[keep][0]

    # -- every byte accounted for --------------------------------------------------------------------
    for job_id, res in resources.items():
        size = len(res.data)
        assert res.max_active == 1 or (res.max_active == 0 and job_id in (plan.remove_queued,
                                                                          plan.remove_queued_delete)), \
            f"job {job_id}: {res.max_active} connections at once (two owners?)"
        if job_id in (plan.remove_queued, plan.remove_queued_delete):
            assert res.bytes_served == 0 and res.requests == [], f"removed queued job {job_id} was fetched"
            continue
        if job_id in (plan.remove_active, plan.remove_active_delete):
            assert (res.bytes_served, len(res.requests)) == stopped[job_id], f"removed job {job_id} went on"
            continue
        if job_id in stopped:  # paused while active
            served_before, asked_before = stopped[job_id]
            start = saved[job_id]
            assert 0 < start <= served_before <= start + WASTE_LIMIT, (job_id, start, served_before)
            assert paused_rows[job_id]["state"] == "paused"
            assert paused_rows[job_id]["bytes_done"] == start, "the queue's bytes_done is not what was saved"
            later = res.requests[asked_before:]
            assert len(later) == 1, [r.range for r in later]
            assert range_start(later[0].range) == start and later[0].headers.get("if-range"), later[0].headers
            assert res.bytes_served == served_before + size - start, (job_id, res.bytes_served, served_before, start)
            continue
        if job_id == plan.pause_resume_active:
            assert len(res.requests) <= 2 and res.bytes_served <= size + WASTE_LIMIT, (res.requests, res.bytes_served)
            continue
        # Untouched, or paused while queued: asked for once, served exactly once.
        assert [(r.range, r.status) for r in res.requests] == [("bytes=0-", 206)], (job_id, res.requests)
        assert res.bytes_served == size, (job_id, res.bytes_served, size)

    # -- the processes ---------------------------------------------------------------------------
    assert_clean(fleet.calls)
    reported: dict[str, list[int]] = {"paused": [], "removed": []}
    completions: list[str] = []
    for result in results:
        lines = result.stderr.splitlines()
        for line in lines:
            assert RUNNER_LINE.match(line), f"unexpected runner output: {line!r}"
            match = re.match(r"(paused|removed) job (\d+)", line)
            if match:
                reported[match.group(1)].append(int(match.group(2)))
            elif "already complete" not in line:
                completions.append(line.split()[1])
        # A job paused or removed by the user did not fail: `run` still exits 0.
        assert result.returncode == 0, (result.returncode, result.stderr)
    assert sorted(reported["paused"]) == [plan.pause_active_resume_now, plan.pause_active_resume_end]
    assert sorted(reported["removed"]) == [plan.remove_active, plan.remove_active_delete]
    for call in (resumed, final):
        completions += [line.split()[1] for line in call.stderr.splitlines()
                        if line.startswith("done ") and "already complete" not in line]
    # Each job that ended done was reported done by exactly one process.
    assert sorted(completions) == sorted(str(out / f"f{i:02d}") for i in expected | {plan.remove_done_delete})
    assert sum(1 for r in results if "done " in r.stderr) >= min(runners, 2), "the runners did not share work"

    # -- the transitions ---------------------------------------------------------------------------
    assert not sampler.errors, sampler.errors
    untouched = set(range(1, total + 1)) - plan.paused - plan.removed - {plan.pause_resume_active}
    changes = check_transitions(sampler.snapshots, range(1, total + 1), untouched)
    assert changes >= 2 * len(untouched)  # the sampler really saw the jobs move
    assert len(lister_snapshots) >= 3
    check_transitions(lister_snapshots, range(1, total + 1), set())
    print(f"\n{total} jobs, {runners} runners: {elapsed:.1f} s, {len(sampler.snapshots)} samples, "
          f"{len(lister_snapshots)} listings, {changes} transitions seen, "
          f"re-fetched after active pauses: {[stopped[i][0] - saved[i] for i in plan.slow[:2]]} bytes")


def test_fifty_jobs_three_runners_and_a_meddler(server, make_data, tmp_path: Path) -> None:
    scenario(server, make_data, tmp_path, total=50, runners=3, first_batch=30)
