"""Proof under failure: a download survives a loop of SIGKILLs at random moments (SPEC rule 5).

One throttled, segmented download is run in a real child process, killed with SIGKILL at 20+
seeded-random moments and restarted each time; the last run is left to finish. The file must
end byte-identical, with no leftovers, and the server must not have sent much more than the
file: every kill may cost at most what arrived since the last save (see ``waste_bound``).

Slow on purpose (about half a minute each): ``pytest -m slow``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlman.saver import PROGRESS_INTERVAL
from dlman.transport import HIGH_WATER as READ_BUFFER
from helpers import saved_bytes

pytestmark = pytest.mark.slow

MiB = 1 << 20
SIZE = 24 * MiB
CONNECTIONS = 4
RATE = 1 * MiB                      # per connection (the fault server paces each response)
AGGREGATE = CONNECTIONS * RATE      # bytes per second the whole download can get at most
SAVE_INTERVAL = 1.0                 # the engine's default: progress saved at least every second
KILLS = 22

SCRIPT = ("import sys, dlman; dlman.download(sys.argv[1], sys.argv[2], connections=4, timeout=5, "
          "retries=int(sys.argv[3]))")


def waste_bound(kills: int) -> int:
    """The most ``bytes_served`` may exceed the file size after ``kills`` SIGKILLs.

    A kill throws away exactly what the server sent since the state last claimed it. Every
    save first writes out what the connections hold in memory, so a state claims everything
    that had arrived when its save began; a kill loses:
    * what arrived since the last save began: at most one save period of bytes at the
      aggregate rate. The save loop wakes every PROGRESS_INTERVAL and saves once SAVE_INTERVAL
      has passed, so saves are at most SAVE_INTERVAL + PROGRESS_INTERVAL apart (0.3 s more for
      the fsyncs and a busy machine). A kill before the run's first save loses at most as much.
    * plus, per connection, what the transport had read from the socket but not yet handed on
      (at most its read buffer's high-water mark) and a couple of server slices in flight.
    """
    save_period = SAVE_INTERVAL + PROGRESS_INTERVAL + 0.3
    in_flight = READ_BUFFER + 2 * (16 << 10)
    per_kill = int(AGGREGATE * save_period) + CONNECTIONS * in_flight
    return kills * per_kill


def spawn(url: str, dest: Path, retries: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, url, str(dest), str(retries)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def fail_if_exited(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"the download ended (rc={proc.returncode}) before {what}: {err.decode()[-2000:]}")


def wait_until(proc: subprocess.Popen[bytes], condition, timeout: float, what: str) -> None:
    """Poll ``condition`` with a deadline; the child must still be running meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        fail_if_exited(proc, what)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def crash_loop(res, url: str, dest: Path, data: bytes, seed: int, retries: int) -> None:
    rng = random.Random(seed)
    moments: list[str] = []
    tight = 0  # the same bound, from the measured moment of each kill rather than a whole period
    started = time.monotonic()
    for number in range(KILLS):
        missing = SIZE - saved_bytes(dest)
        requests_before = len(res.requests)
        proc = spawn(url, dest, retries)
        try:
            # A run "starts" when the server sees its first request (Python's start-up excluded).
            wait_until(proc, lambda: len(res.requests) > requests_before, 20, f"run {number} to start")
            if missing > 12 * MiB and rng.random() < 0.3:
                # After a random amount of newly saved progress, then a random moment between saves.
                before, step = saved_bytes(dest), rng.randint(1, 4 * MiB)
                wait_until(proc, lambda: saved_bytes(dest) >= before + step, 20, f"run {number} to save")
                # The state claims what had arrived when its save began: a poll, a parse and
                # the save's own flush, fsyncs and rename earlier than we see it.
                anchor = time.monotonic() - 0.25
                in_flight = READ_BUFFER + 2 * (16 << 10)
                delay = rng.uniform(0.0, 0.6)
                moments.append(f"{step >> 10}KiB+{delay:.2f}s")
            else:
                # At a random moment after start: before, during or just after the first save
                # while much is missing; before any save (no progress) near the end, so that
                # the loop cannot finish the file before its last kill.
                anchor = res.requests[requests_before].time  # the server's clock is ours
                in_flight = 2 * (16 << 10)
                delay = rng.uniform(0.1, 1.4 if missing > 8 * MiB else 0.6)
                moments.append(f"{delay:.2f}s")
            time.sleep(delay)
            fail_if_exited(proc, f"kill {number}")
        finally:
            if proc.poll() is None:
                killed_at = time.monotonic()
                kill(proc)
        # Since ``anchor`` (the run's first request, or the save we saw) the server can have sent
        # at most AGGREGATE bytes per second (plus a slice per connection); before it, only the
        # bytes the save did not yet claim: those still in each connection's buffers.
        tight += int(AGGREGATE * (killed_at - anchor + 0.05)) + CONNECTIONS * in_flight
    print(f"\n{KILLS} kills in {time.monotonic() - started:.1f}s at {', '.join(moments)}; "
          f"saved {saved_bytes(dest)} of {SIZE}")

    last = spawn(url, dest, retries)
    out, err = last.communicate(timeout=90)
    assert last.returncode == 0, err.decode()
    assert out == b"" and err == b""
    assert dest.read_bytes() == data
    leftovers = [p.name for p in dest.parent.iterdir()]
    assert leftovers == [dest.name], "leftover files"

    bound = SIZE + waste_bound(KILLS)
    print(f"bytes served {res.bytes_served} = size + {(res.bytes_served - SIZE) / MiB:.1f} MiB "
          f"({(res.bytes_served - SIZE) / KILLS / MiB:.2f} MiB per kill); bound size + "
          f"{(bound - SIZE) / MiB:.1f} MiB; from the kill moments: size + {tight / MiB:.1f} MiB")
    assert res.bytes_served <= bound
    assert res.bytes_served <= SIZE + tight


def test_sigkill_loop_against_a_clean_server_ends_byte_identical(server, make_data, tmp_path):
    data = make_data(SIZE, seed=11)
    res = server.add("/loop.bin", data, throttle=RATE, auto_etag=True)
    crash_loop(res, server.url("/loop.bin"), tmp_path / "loop.bin", data, seed=1234, retries=5)


def test_sigkill_loop_against_a_server_dropping_connections_ends_byte_identical(server, make_data, tmp_path):
    data = make_data(SIZE, seed=12)
    # About one drop per 1.6 MiB sent: several per run, on every connection.
    res = server.add("/flaky.bin", data, throttle=RATE, auto_etag=True, drop_probability=0.01, seed=99)
    crash_loop(res, server.url("/flaky.bin"), tmp_path / "flaky.bin", data, seed=4321, retries=10)
    print(f"{len(res.requests)} requests over {KILLS + 1} runs")
