"""Red-team tests for the 'scale' merge (streamed manifests, batched exchange, check_url fast path).

Each test here failed against 9880048; the docstrings say what was seen and what the SPEC asks.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
import threading
import types
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dlman import options
from dlman import queue as queue_module
from dlman.cli import cli
from dlman.errors import InvalidInputError
from dlman.manifest import ManifestError, parse_manifest
from dlman.options import check_url
from dlman.queue import Queue
from test_queue import FakeEngine


@pytest.fixture
def dlman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``dlman(*args)`` against a fresh home, in tmp_path, with a fake engine (as in test_cli)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith(("DLMAN_", "SSL_CERT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DLMAN_CONFIG", os.devnull)
    monkeypatch.setattr(queue_module, "_default_engine", FakeEngine)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--home", str(tmp_path / "home"), *args])

    return invoke


def queued(home: Path) -> list[Any]:
    with Queue(home) as queue:
        return queue.list()


# -- the check_url fast path accepts what the full check refuses ---------------------------------------

@pytest.mark.parametrize("url", [
    "http\u017f://127.0.0.1/x",       # LATIN SMALL LONG S: (?i:https?) matches it by Unicode case folding
    "HTTP\u017f://127.0.0.1/x",
    "http://127.0.0.1:\u0668\u0660/x",  # ARABIC-INDIC digits: \d matches them, int() reads 80
    "http://127.0.0.1:\uff18\uff10/x",  # FULLWIDTH digits
    "http://127.0.0.1/\udcff",          # a lone surrogate (undecodable argv byte): httpx cannot encode it
])
def test_fast_path_refuses_what_the_full_check_refuses(url: str) -> None:
    """9880048's _PLAIN_URL regex accepts these without asking urlsplit/httpx; the check before it
    (urlsplit, then httpx.URL(...).host) refused every one. Seen: check_url returns the URL."""
    cache = getattr(options, "_url_problem", None)
    if cache is not None:
        cache.cache_clear()  # a check made by an earlier test must not answer for this one
    with pytest.raises(InvalidInputError):
        check_url(url)


def test_add_with_a_long_s_scheme_in_a_manifest_is_exit_2_and_adds_nothing(dlman, tmp_path: Path) -> None:
    """SPEC: a bad URL in a manifest is reported as FILE:LINE, exit 2, nothing enqueued.
    Seen: exit 0, the job is queued, and `run` fails it with "missing an 'http://' or 'https://'"."""
    manifest = tmp_path / "m.txt"
    manifest.write_text("http://127.0.0.1:9/a\n  out=a\nhttp\u017f://127.0.0.1:9/b\n  out=b\n", encoding="utf-8")
    result = dlman("add", "--later", "-i", str(manifest))
    assert result.exit_code == 2, result.output
    assert "m.txt:3:" in result.output
    assert queued(tmp_path / "home") == []


def test_add_of_an_undecodable_url_is_exit_2_and_adds_nothing(dlman, tmp_path: Path) -> None:
    """`dlman add --later $'http://127.0.0.1/\\xff'` (argv decoded with surrogateescape).
    Seen: exit 0 and a job whose first failure cannot be stored (see the next test)."""
    result = dlman("add", "--later", "http://127.0.0.1:9/\udcff")
    assert result.exit_code == 2, result.output
    assert queued(tmp_path / "home") == []


@pytest.mark.parametrize("where", [("-d", "{tmp}/bad\udcff"), ("-o", "bad\udcff.bin"),
                                   ("-d", "{tmp}/bad\udcff", "-i", "{tmp}/m.txt")],
                         ids=["dir", "output", "manifest-dir"])
def test_an_undecodable_destination_is_exit_2_names_itself_and_adds_nothing(dlman, tmp_path: Path,
                                                                           where: tuple[str, ...]) -> None:
    """`dlman add -d $'bad\xff'` (a path of non-UTF-8 bytes). Seen: exit 1 with
    "'utf-8' codec can't encode character '\udcff'", which named neither the option nor the path."""
    (tmp_path / "m.txt").write_text("http://127.0.0.1:9/m\n  dir=sub\n", encoding="utf-8")
    args = [part.format(tmp=tmp_path) for part in where]
    urls = [] if "-i" in args else ["http://127.0.0.1:9/a"]
    result = dlman("add", "--later", *args, *urls)
    assert result.exit_code == 2, result.output
    assert "bad\\xff" in result.output and "not valid UTF-8" in result.output
    assert queued(tmp_path / "home") == []


@pytest.mark.parametrize("dest", ["x\ud83d/", "x\udcff\ud800/", "x\x00y/"], ids=["high", "mixed", "nul"])
def test_the_api_refuses_a_destination_no_file_system_call_can_take(tmp_path: Path, dest: str) -> None:
    """Seen: a lone surrogate outside U+DC80-U+DCFF raised a raw UnicodeEncodeError while the
    error message was being built, and a NUL was enqueued as job 1."""
    with Queue(tmp_path / "home") as queue:
        with pytest.raises(InvalidInputError, match="not valid UTF-8|NUL"):
            queue.add("http://127.0.0.1:9/a", str(tmp_path / dest))
        assert queue.list() == []


# -- a job whose settle fails ---------------------------------------------------------------------------

def test_a_job_whose_ending_cannot_be_stored_does_not_wedge_the_queue(tmp_path: Path) -> None:
    """A queue written by 9880048 can hold a URL with a lone surrogate (stored JSON-escaped, as
    add_stream writes it). Its 404 message names the URL; the settle's UPDATE raises
    UnicodeEncodeError, the whole exchange transaction rolls back (with the settles of any other
    jobs that ended in the same batch) and the run dies, leaving the job `active`. The next
    `dlman run` takes it over first (its owner is gone) and dies the same way: with -j 1 no
    other job ever runs. SPEC: a failed job fails with a message; "the queue carries on".
    Seen: UnicodeEncodeError out of Queue.run; job 1 active, job 2 never started."""
    home = tmp_path / "home"
    with Queue(home) as queue:
        bad = queue.add("http://127.0.0.1:9/placeholder/fail", tmp_path, output="bad")
        good = queue.add("http://127.0.0.1:9/good", tmp_path, output="good")
        with closing(sqlite3.connect(queue.path)) as conn, conn:
            conn.execute("UPDATE jobs SET urls = ? WHERE id = ?",
                         (json.dumps(["http://127.0.0.1:9/\udcff/fail"]), bad.id))  # ASCII-escaped, as stored
        raised = None
        try:
            queue.run(1, engine_factory=FakeEngine)
        except Exception as error:  # noqa: BLE001
            raised = error
        states = {job.id: job.state for job in queue.list()}
    assert raised is None, repr(raised)
    assert states == {bad.id: "failed", good.id: "done"}, states


# -- the manifest transaction holds the queue's write lock while waiting for input ---------------------

class _Pipe(io.RawIOBase):
    """stdin fed by a slow producer: one entry, then nothing until ``more`` is set, then EOF."""

    def __init__(self, first: bytes, waiting: threading.Event, more: threading.Event) -> None:
        self.chunks = [first]
        self.waiting, self.more = waiting, more

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.chunks:
            self.waiting.set()
            self.more.wait(10)
            return 0
        data = self.chunks.pop(0)
        buffer[:len(data)] = data
        return len(data)


def test_a_slow_manifest_on_stdin_does_not_lock_every_other_dlman_out(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`producer | dlman add -i -`: add_stream opens BEGIN IMMEDIATE before reading the first line
    and keeps it while stdin is read. While the producer is slow, every other process's write
    waits: `dlman pause` hangs (so an active job cannot stop "within about 2 s"), a runner's
    heartbeat and settle hang, and after LOCK_DEADLINE (300 s) they fail with "database is
    locked". Seen by hand: `dlman pause 1` still blocked after 15 s. Before the merge the
    manifest was read whole, checked, then written in one short transaction."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith(("DLMAN_", "SSL_CERT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DLMAN_CONFIG", os.devnull)
    home = tmp_path / "home"
    with Queue(home) as queue:
        job = queue.add("http://127.0.0.1:9/a", tmp_path, output="a")
        path = queue.path
    waiting, more = threading.Event(), threading.Event()
    stdin = types.SimpleNamespace(buffer=io.BufferedReader(_Pipe(b"http://127.0.0.1:9/b\n  out=b\n", waiting, more)))
    monkeypatch.setattr(sys, "stdin", stdin)
    status: list[Any] = []

    def add() -> None:
        from dlman.cli import main
        try:
            main(["--home", str(home), "-q", "add", "--later", "-d", str(tmp_path), "-i", "-"])
        except SystemExit as exit:
            status.append(exit.code)

    thread = threading.Thread(target=add, daemon=True)
    thread.start()
    try:
        assert waiting.wait(5), "the add never asked for the rest of stdin"
        # Another process's write (what pause, resume, remove, a heartbeat or a settle does).
        with closing(sqlite3.connect(path, timeout=2.0, isolation_level=None)) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE jobs SET state = 'paused' WHERE id = ?", (job.id,))
                conn.execute("COMMIT")
                locked_out = False
            except sqlite3.OperationalError as error:
                assert "locked" in str(error)
                locked_out = True
    finally:
        more.set()
        thread.join(10)
    assert status == [0]
    assert not locked_out, "the queue stayed write-locked while `add -i -` waited for its input"


# -- two entries writing the same file --------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "http://h/a\n  dir=a\n  out=b/c\nhttp://h/b\n  dir=a/b\n  out=c\n",
    "http://h/a\n  out=a/c\nhttp://h/b\n  dir=a\n  out=c\n",
])
def test_two_entries_writing_the_same_file_through_dir_and_out(text: str) -> None:
    """SPEC: "two entries writing the same file" is a bad line (exit 2, nothing enqueued).
    _target keys on (dir, out) separately, so dir=a + out=b/c and dir=a/b + out=c (both a/b/c)
    pass; `dlman add --later -i` enqueues both (exit 0). (The rule predates the merge, which
    rewrote _target; still a hole in the contract.)"""
    with pytest.raises(ManifestError):
        parse_manifest(text, "m.txt")
