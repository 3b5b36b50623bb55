"""What the command line shows: JSON progress for programs, a listing that streams, ``list --watch``,
``show``, and shell completion of job ids and states."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlman.cli import cli
from dlman.progress import JsonDisplay, Speed, eta
from dlman.queue import Job, NewJob, Outcome, Queue
from dlman.result import Progress

MiB = 1 << 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", DLMAN_CONFIG=os.devnull, PYTHONUNBUFFERED="1")
    return environ


def dlman(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dlman", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# -- --progress json -----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(job_id: int = 1) -> Job:
    return Job(job_id, ("http://h/f?sig=s3cret",), "/d/f", False, None, {}, "active", 0, None, None, None, 0.0, 0.0)


def test_json_progress_is_throttled_per_job_and_every_end_is_told() -> None:
    stream, clock = io.StringIO(), Clock()
    display = JsonDisplay(stream, interval=0.5, clock=clock)
    for step in range(10):                         # ten reports within 0.45 s: one line
        clock.now += 0.05
        display.progress(job(), Progress(Path("/d/f"), step * 1000, 10_000, 2))
    clock.now += 0.5                               # half a second later: the next one
    display.progress(job(), Progress(Path("/d/f"), 9000, 10_000, 2))
    display.progress(job(2), Progress(None, 10, None, 1))   # another job has its own pace
    display.ended(Outcome(1, "done", "http://h/f?sig=s3cret", path="/d/f", size=10_000, digest="md5:ab",
                          digest_source="digest"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["id"]) for e in lines] == [("progress", 1), ("progress", 1), ("progress", 2), ("end", 1)]
    assert lines[1]["bytes_done"] == 9000 and lines[1]["total"] == 10_000 and lines[1]["speed"] > 0
    assert lines[1]["eta"] is not None and lines[1]["url"] == "http://h/f?sig=***"
    assert lines[3] == {"event": "end", "id": 1, "state": "done", "path": "/d/f", "url": "http://h/f?sig=***",
                        "size": 10_000, "skipped": False, "error": None, "digest": "md5:ab", "digest_source": "digest"}


@pytest.mark.parametrize("samples, expected", [
    ([(0.0, 0)], None),
    ([(0.0, 0), (1.0, 1000)], 1000.0),
    ([(0.0, 0), (1.0, 1000), (2.0, 3000)], 1500.0),
    ([(0.0, 0), (10.0, 1000), (12.0, 5000)], 2000.0),    # the window forgets old samples
    ([(0.0, 5000), (1.0, 100), (2.0, 600)], 500.0),      # started over
])
def test_speed(samples, expected) -> None:
    speed = Speed()
    for now, done in samples:
        result = speed.update(now, done)
    assert result == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("done, total, speed, expected", [(0, 100, 10.0, 10.0), (50, None, 10.0, None),
                                                         (50, 100, None, None), (100, 100, 5.0, 0.0)])
def test_eta(done, total, speed, expected) -> None:
    assert eta(done, total, speed) == expected


def test_json_progress_through_a_real_run(server, make_data, tmp_path, env) -> None:
    server.add("/a", make_data(2 * MiB), throttle=MiB)
    server.add("/b", make_data(MiB, seed=1), throttle=MiB)
    began = time.monotonic()
    result = dlman(env, "add", "-c", "1", "-d", str(tmp_path), "--progress", "json", "--insecure",
                   server.url("/a"), server.url("/b"), server.url("/missing"))
    took = time.monotonic() - began
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines()]  # every line parses
    ends = {e["id"]: e for e in events if e["event"] == "end"}
    assert {i: e["state"] for i, e in ends.items()} == {1: "done", 2: "done", 3: "failed"}
    assert ends[1]["path"] == str(tmp_path / "a") and ends[1]["size"] == 2 * MiB and "not found" in ends[3]["error"]
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["id"] for e in progress} >= {1, 2}
    assert set(progress[0]) == {"event", "id", "state", "path", "url", "bytes_done", "total", "speed", "eta",
                                "connections"}
    for job_id in (1, 2):
        assert len([e for e in progress if e["id"] == job_id]) <= 2 * took + 1  # at most two a second
    assert any(e["event"] == "log" and e["level"] == "warning" and "--insecure" in e["message"] for e in events)


# -- the listing streams -------------------------------------------------------------------------

@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DLMAN_CONFIG", os.devnull)
    logger = logging.getLogger("dlman")
    level, handlers = logger.level, list(logger.handlers)
    yield tmp_path / "home"
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.mark.parametrize("args", [["list"], ["list", "--json"]])
def test_the_listing_is_written_as_it_is_read(cli_home, monkeypatch, args) -> None:
    """Rows reach the output before later pages are read: here a later page fails, after them."""
    with Queue(cli_home) as queue:
        queue.add_many([NewJob((f"http://h/{i}",), "/d", True, None, {}) for i in range(1200)])

    original = Queue._pages

    def pages(self, state):  # type: ignore[no-untyped-def]
        yield from itertools.islice(original(self, state), 1000)
        raise RuntimeError("the disk went away")
    monkeypatch.setattr(Queue, "_pages", pages)
    result = CliRunner().invoke(cli, ["--home", str(cli_home), *args])
    assert result.exit_code == 1 and "the disk went away" in result.stderr
    assert "http://h/999" in result.stdout  # everything read before the failure was written


def test_a_listing_of_100000_jobs_starts_within_a_second(tmp_path, env) -> None:
    with Queue(tmp_path / "home") as queue:
        queue.add_many([NewJob((f"http://h.example/f{i}",), "/d", True, None, {}) for i in range(100_000)])
    for args in (["list"], ["list", "--json"]):
        process = start(env, *args)
        try:
            began = time.monotonic()
            first = process.stdout.readline()
            took = time.monotonic() - began
        finally:
            process.kill()
            process.communicate()
        assert first.strip() in ("ID  STATE   PROGRESS  SIZE  DEST  URL", "[")
        assert took < 1.0, f"dlman {' '.join(args)}: first line after {took:.2f} s"


# -- list --watch --------------------------------------------------------------------------------

def read_table(process: subprocess.Popen[str], deadline: float) -> list[str]:
    """The next table (up to its blank line) that ``list --watch`` wrote."""
    lines: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line == "\n" and lines:
                return lines
            lines.append(line.rstrip("\n"))
    raise AssertionError(f"no table before the deadline; got {lines}")


def test_list_watch_shows_changes_until_interrupted(tmp_path, env) -> None:
    assert dlman(env, "add", "--later", "http://127.0.0.1:9/a", "http://127.0.0.1:9/b").returncode == 0
    watcher = start(env, "list", "--watch", "--interval", "0.2")
    try:
        deadline = time.monotonic() + 20
        table = read_table(watcher, deadline)
        assert table[0].startswith("dlman: ") and "Ctrl-C" in table[0] and table[1].startswith("ID  STATE")
        assert [row.split()[1] for row in table[2:]] == ["queued", "queued"]
        assert dlman(env, "pause", "2").returncode == 0
        while "paused" not in "".join(table):
            table = read_table(watcher, deadline)
        assert [row.split()[:2] for row in table[2:]] == [["1", "queued"], ["2", "paused"]]
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 130
        assert "Traceback" not in watcher.stderr.read()
    finally:
        watcher.kill()
        watcher.communicate()


def test_list_watch_with_json_is_a_usage_error(tmp_path, env) -> None:
    result = dlman(env, "list", "--watch", "--json")
    assert result.returncode == 2 and "--watch shows a table" in result.stderr


# -- show ----------------------------------------------------------------------------------------

def test_show_one_job_in_full_with_secrets_masked(tmp_path, env) -> None:
    manifest = "http://127.0.0.1:9/a\thttp://127.0.0.1:9/mirror\n  out=a.iso\n"
    assert subprocess.run([sys.executable, "-m", "dlman", "add", "--later", "-d", str(tmp_path), "-c", "3",
                           "-H", "Authorization: Bearer s3cret", "--max-speed", "1M", "-i", "-"], input=manifest,
                          env=env, capture_output=True, text=True, timeout=60).returncode == 0
    shown = dlman(env, "show", "1")
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[0] == "job:       1 (queued)"
    assert "url:       http://127.0.0.1:9/a" in lines and "mirror:    http://127.0.0.1:9/mirror" in lines
    assert f"dest:      {tmp_path / 'a.iso'}" in lines
    assert "option:    connections = 3" in lines and "option:    max-speed = 1048576" in lines
    assert "option:    headers = Authorization: ***" in lines and "s3cret" not in shown.stdout
    details = json.loads(dlman(env, "show", "--json", "1").stdout)
    assert details["id"] == 1 and details["partial"] is None and details["digest"] is None
    missing = dlman(env, "show", "9")
    assert missing.returncode == 2 and "no job with id 9" in missing.stderr


# -- shell completion ----------------------------------------------------------------------------

def complete(env: dict[str, str], words: str, shell: str = "bash") -> list[str]:
    """What dlman offers for the last word of ``words`` (click's protocol, as the shell script asks)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    done = subprocess.run([sys.executable, "-m", "dlman"], capture_output=True, text=True, timeout=60,
                          env=dict(env, _DLMAN_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=str(cword)))
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def test_completion_of_ids_from_the_queue_and_of_states(tmp_path, env) -> None:
    assert complete(env, "dlman show ") == []
    assert not (tmp_path / "home").exists()  # completing never creates a queue
    assert dlman(env, "add", "--later", *(f"http://127.0.0.1:9/{n}" for n in "abcdefghijkl")).returncode == 0
    assert dlman(env, "pause", "2").returncode == 0
    assert complete(env, "dlman show ") == [str(i) for i in range(1, 13)]
    assert complete(env, "dlman show 1") == ["1", "10", "11", "12"]
    assert complete(env, "dlman resume ") == [str(i) for i in [2, 1, *range(3, 13)]]  # paused first
    assert "2" not in complete(env, "dlman pause ")
    assert complete(env, "dlman remove 1 3 1") == ["10", "11", "12"]  # ids already typed are not offered
    assert complete(env, "dlman list --state ") == ["queued", "active", "paused", "done", "failed"]
    zsh = subprocess.run([sys.executable, "-m", "dlman"], env=dict(env, _DLMAN_COMPLETE="zsh_complete",
                         COMP_WORDS="dlman show 1", COMP_CWORD="2"), capture_output=True, text=True, timeout=60)
    assert "queued http://127.0.0.1:9/a" in zsh.stdout  # each id with what it is


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_script_for_each_shell(env, shell) -> None:
    script = subprocess.run([sys.executable, "-m", "dlman"], env=dict(env, _DLMAN_COMPLETE=f"{shell}_source"),
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_DLMAN_COMPLETE" in script.stdout
