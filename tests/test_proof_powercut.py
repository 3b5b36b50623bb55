"""Proof under failure: a power cut never leaves a state that claims bytes that were not flushed.

A power cut loses every write that was not fsync'ed. The state file is what a later run
trusts, so (SPEC rule 5, field notes "crash-safe order") it must claim only bytes that reached
the disk before it was written, and a resume must trust nothing else: bytes the state does not
claim may be zeros or garbage after the cut. And a state file that is itself damaged or wrong
must lead to a clean restart with a warning, never to a crash or a wrong file.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest

import dlman.storage as storage
from dlman.state import ResumeState
from helpers import fetch, start_and_cancel

MiB = 1 << 20



def claimed(state: ResumeState) -> list[tuple[int, int]]:
    """The ranges the state says are on disk."""
    return state.written()


def covered_by(ranges: list[tuple[int, int]], spans: list[tuple[int, int]]) -> bool:
    """Every byte of ``ranges`` lies in some span of ``spans``."""
    marks = sorted(spans)
    merged: list[list[int]] = []
    for a, b in marks:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return all(any(m[0] <= a and b <= m[1] for m in merged) for a, b in ranges if a < b)


def lose_unclaimed(part: Path, state: ResumeState, rng: random.Random, garbage: bool) -> None:
    """What a power cut may leave: every byte the state does not claim zeroed or garbled."""
    unclaimed, cursor = [], 0
    for a, b in claimed(state) + [(state.size, state.size)]:
        if a > cursor:
            unclaimed.append((cursor, a))
        cursor = b
    with open(part, "r+b") as handle:
        for a, b in unclaimed:
            handle.seek(a)
            handle.write(rng.randbytes(b - a) if garbage else bytes(b - a))


# -- the state claims only flushed bytes -------------------------------------------------------

class FlushTracker:
    """Wraps dlman.storage's I/O: which byte ranges were fsync'ed when each state was saved.

    A write counts as durable only if it completed before an fsync of the part file began.
    At every state save it checks the claim and keeps a power-cut image: the .part as it was,
    with every byte that was not durable replaced by garbage.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, part: Path) -> None:
        self.part = part
        self.completed: list[tuple[int, int]] = []   # writes that returned, not yet known durable
        self.durable: list[tuple[int, int]] = []
        self.saves: list[tuple[bytes, bytes]] = []   # (power-cut image, state bytes)
        self.violations: list[str] = []
        self.rng = random.Random(5)
        pwritev, pwritev_all, fsync, save_state = (storage._pwritev, storage._pwritev_all,
                                                   storage._fsync, storage._save_state)

        async def tracked_pwritev(fd: int, chunks: list[bytes], offset: int) -> None:
            await pwritev(fd, chunks, offset)
            self.completed.append((offset, offset + sum(len(c) for c in chunks)))

        def tracked_pwritev_all(fd: int, chunks: list[bytes], offset: int) -> None:
            pwritev_all(fd, chunks, offset)
            self.completed.append((offset, offset + sum(len(c) for c in chunks)))

        async def tracked_fsync(fd: int) -> None:
            before = list(self.completed)
            await fsync(fd)
            self.durable.extend(before)

        async def tracked_save_state(path: Path, data: bytes) -> None:
            state = ResumeState.decode(data)
            if not covered_by(claimed(state), self.durable):
                self.violations.append(f"state claims {claimed(state)} but only {sorted(self.durable)} "
                                       "was fsync'ed")
            on_disk = self.part.read_bytes()
            lost = bytearray(self.rng.randbytes(max(len(on_disk), state.size or 0)))
            for a, b in self.durable:
                lost[a:b] = on_disk[a:b]
            self.saves.append((bytes(lost), bytes(data)))
            await save_state(path, data)

        monkeypatch.setattr(storage, "_pwritev", tracked_pwritev)
        monkeypatch.setattr(storage, "_pwritev_all", tracked_pwritev_all)
        monkeypatch.setattr(storage, "_fsync", tracked_fsync)
        monkeypatch.setattr(storage, "_save_state", tracked_save_state)


def test_every_saved_state_claims_only_fsynced_bytes_and_resumes_from_a_power_cut_image(
        server, make_data, tmp_path, monkeypatch):
    data = make_data(12 * MiB, seed=21)
    res = server.add("/pc.bin", data, throttle=1 * MiB, auto_etag=True)
    dest = tmp_path / "run" / "pc.bin"
    dest.parent.mkdir()
    tracker = FlushTracker(monkeypatch, dest.with_name("pc.bin.part"))
    start_and_cancel(server.url("/pc.bin"), dest, 3 * MiB, connections=3, min_segment=512 << 10)
    monkeypatch.undo()

    assert tracker.violations == []
    assert len(tracker.saves) >= 2, "expected several saves while the download ran"
    res.throttle = None
    # A power cut just after any of these saves: only the fsync'ed bytes survive, the rest is
    # garbage. Resuming from that image must still give the exact file.
    for number, (image, state_bytes) in enumerate(tracker.saves):
        state = ResumeState.decode(state_bytes)
        target = tmp_path / f"cut{number}" / "pc.bin"
        target.parent.mkdir()
        target.with_name("pc.bin.part").write_bytes(image)
        target.with_name("pc.bin.part.state").write_bytes(state_bytes)
        res.reset_counters()
        fetch(server.url("/pc.bin"), target, connections=3)
        assert target.read_bytes() == data, f"wrong file after a power cut at save {number}"
        missing = sum(b - a for a, b in state.missing)
        assert missing <= res.bytes_served, "claimed bytes were fetched again or not at all"


@pytest.mark.parametrize("garbage", [False, True], ids=["zeroed", "garbled"])
def test_resume_trusts_only_claimed_bytes_after_losing_the_unflushed_ones(server, make_data, tmp_path,
                                                                          garbage):
    data = make_data(8 * MiB, seed=22)
    res = server.add("/lost.bin", data, throttle=512 << 10, auto_etag=True)
    dest = tmp_path / "lost.bin"
    start_and_cancel(server.url("/lost.bin"), dest, 1 * MiB, connections=4, min_segment=512 << 10)
    part, state_file = dest.with_name("lost.bin.part"), dest.with_name("lost.bin.part.state")
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy2(part, backup / part.name)
    shutil.copy2(state_file, backup / state_file.name)

    state = ResumeState.decode(state_file.read_bytes())
    assert state.missing, "the download should have been interrupted with bytes missing"
    for a, b in claimed(state):
        assert part.read_bytes()[a:b] == data[a:b], "a claimed byte is not on disk"
    lose_unclaimed(part, state, random.Random(3), garbage)
    res.throttle = None
    res.reset_counters()
    fetch(server.url("/lost.bin"), dest, connections=4)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "lost.bin"]
    missing = sum(b - a for a, b in state.missing)
    assert res.bytes_served >= missing
    assert all(r.range != "bytes=0-" for r in res.requests), "it should have resumed, not restarted"


# -- damaged or wrong state files ------------------------------------------------------------

SIZE = 2 * MiB


def valid_state(url: str, **changes) -> dict:
    raw = {"version": 1, "url": url, "size": SIZE, "etag": None, "last_modified": None,
           "ranges": True, "missing": [[SIZE // 2, SIZE]]}
    raw.update(changes)
    return raw


def _encode(raw: dict) -> bytes:
    return json.dumps(raw).encode()


BAD_STATES = {
    "empty": lambda url: b"",
    "truncated": lambda url: _encode(valid_state(url))[:37],
    "garbage": lambda url: random.Random(1).randbytes(300),
    "not utf-8": lambda url: b"\xff\xfe" + _encode(valid_state(url)),
    "json list": lambda url: b"[1, 2, 3]",
    "wrong version": lambda url: _encode(valid_state(url, version=99)),
    "range beyond the size": lambda url: _encode(valid_state(url, missing=[[SIZE // 2, SIZE + 4096]])),
    "negative range": lambda url: _encode(valid_state(url, missing=[[-5, 10]])),
    "overlapping ranges": lambda url: _encode(valid_state(url, missing=[[0, 100], [50, 200]])),
    "unsorted ranges": lambda url: _encode(valid_state(url, missing=[[500, 600], [0, 100]])),
    "negative size": lambda url: _encode(valid_state(url, size=-1)),
    "size as text": lambda url: _encode(valid_state(url, size="2097152")),
    "no size": lambda url: _encode(valid_state(url, size=None)),
    "another url": lambda url: _encode(valid_state(url + "?other")),
    "no ranges": lambda url: _encode(valid_state(url, ranges=False)),
    # The state claims the first half, but the .part holds only 1000 bytes.
    "claims more than the part holds": lambda url: _encode(valid_state(url)),
    # Nothing missing: it claims the whole file, the .part holds 1000 bytes.
    "claims everything": lambda url: _encode(valid_state(url, missing=[])),
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_bad_state_file_restarts_safely_with_a_warning(server, make_data, tmp_path, caplog, kind):
    data = make_data(SIZE, seed=23)
    res = server.add("/bad.bin", data, auto_etag=True)
    url = server.url("/bad.bin")
    dest = tmp_path / "bad.bin"
    dest.with_name("bad.bin.part").write_bytes(b"\xee" * 1000)   # wrong bytes if trusted
    dest.with_name("bad.bin.part.state").write_bytes(BAD_STATES[kind](url))
    with caplog.at_level(logging.WARNING, logger="dlman"):
        result = fetch(url, dest, connections=2)
    assert result.path == dest and dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "dlman" and r.levelno >= logging.WARNING]
    assert any("state" in w for w in warnings), warnings
    assert res.requests[0].range == "bytes=0-", "a bad state must lead to a fresh start"


@pytest.mark.parametrize("kind", ["a 5000-digit number", "deeply nested arrays"])
def test_state_that_breaks_the_json_parser_restarts_safely(server, make_data, tmp_path, caplog, kind):
    data = make_data(SIZE, seed=24)
    server.add("/deep.bin", data)
    dest = tmp_path / "deep.bin"
    dest.with_name("deep.bin.part").write_bytes(b"\xee" * 1000)
    bad = (b'{"version":1,"url":"u","size":' + b"9" * 5000 + b"}" if kind.startswith("a 5000")
           else b"[" * 100_000)
    dest.with_name("deep.bin.part.state").write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/deep.bin"), dest)
    assert dest.read_bytes() == data
    assert any("state" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def cut_mid_save(server, make_data, tmp_path) -> tuple[bytes, Path]:
    """Interrupt a download, then leave what a cut between writing NAME.part.state.tmp and
    renaming it over NAME.part.state leaves behind; resume it (short: no save happens)."""
    data = make_data(4 * MiB, seed=25)
    res = server.add("/tmp.bin", data, throttle=512 << 10, auto_etag=True)
    dest = tmp_path / "tmp.bin"
    start_and_cancel(server.url("/tmp.bin"), dest, 1 * MiB, connections=2, min_segment=512 << 10)
    dest.with_name("tmp.bin.part.state.tmp").write_bytes(b'{"version":1,"url":"half-writ')
    res.throttle = None
    fetch(server.url("/tmp.bin"), dest, connections=2)
    return data, dest


def test_a_cut_mid_save_leaves_the_old_state_in_force(server, make_data, tmp_path):
    data, dest = cut_mid_save(server, make_data, tmp_path)
    assert dest.read_bytes() == data
    assert not dest.with_name("tmp.bin.part").exists()
    assert not dest.with_name("tmp.bin.part.state").exists()


def test_a_cut_mid_save_leaves_no_temp_file_after_the_download_completes(server, make_data, tmp_path):
    data, dest = cut_mid_save(server, make_data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp.bin"], "leftover files"
