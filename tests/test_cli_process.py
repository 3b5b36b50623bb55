"""Real ``dlman`` processes against the local fault server: signals, crashes, two runners, manifests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for

SIZE = 2 * 1024 * 1024
SLOW = 256 * 1024  # bytes/s per connection: a 2 MiB file takes ~8 s on one connection


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", PYTHONUNBUFFERED="1")
    return environ


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlman", *args]


def dlman(env: dict[str, str], *args: str, cwd: Path, input: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), env=env, cwd=cwd, input=input, capture_output=True, text=True,
                          timeout=timeout)


def start(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(command(*args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def jobs(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    result = dlman(env, "list", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def job(env: dict[str, str], cwd: Path, job_id: int = 1) -> dict[str, Any]:
    """The job's row, or {} while it is not in the queue (yet)."""
    return next((j for j in jobs(env, cwd) if j["id"] == job_id), {})


def wait_transferring(env: dict[str, str], cwd: Path, res: Any, job_id: int = 1) -> None:
    """Until the job is active in the queue and a few hundred KiB have left the server.

    The server's count, not the queue's: the engine reports bytes once they are
    on disk, which with big write buffers can be only at the end.
    """
    wait_for(lambda: res.bytes_served > 300_000 and job(env, cwd, job_id).get("state") == "active",
             what="the download to be under way")


def finish(process: subprocess.Popen[str], timeout: float = 20) -> int:
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_add_in_the_foreground(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    data = make_data(SIZE)
    server.add("/file.bin", data)
    result = dlman(env, "add", server.url("/file.bin"), "-d", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "file.bin").read_bytes() == data
    assert f"done {tmp_path / 'out' / 'file.bin'}" in result.stderr
    assert job(env, tmp_path)["state"] == "done"


def test_later_then_run(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    files = {f"/f{i}": make_data(100_000 + i, seed=i) for i in range(3)}
    for path, data in files.items():
        server.add(path, data)
    added = dlman(env, "add", "--later", *(server.url(p) for p in files), cwd=tmp_path)
    assert added.returncode == 0 and added.stdout.split() == ["1", "2", "3"]
    assert all(server.resource(p).bytes_served == 0 for p in files)
    result = dlman(env, "run", "-j", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path, data in files.items():
        assert (tmp_path / path[1:]).read_bytes() == data


def test_manifest_good_bad_twice_and_stdin(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    a, b = server.add("/a", make_data(300_000)), server.add("/b", make_data(200_000, seed=1))
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"# two files\n{server.url('/a')}\n  out=first.bin\n{server.url('/b')}\n  dir=sub\n")
    assert dlman(env, "add", "-i", str(manifest), cwd=tmp_path).returncode == 0
    assert (tmp_path / "first.bin").read_bytes() == a.data and (tmp_path / "sub" / "b").read_bytes() == b.data
    served = a.bytes_served + b.bytes_served
    first_stat = (tmp_path / "first.bin").stat()
    a.throttle = b.throttle = SLOW  # so bytes pushed into the socket before the client hangs up stay few
    again = dlman(env, "add", "-i", str(manifest), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already complete") == 2
    assert a.bytes_served + b.bytes_served - served < 200_000  # the second run downloads nothing
    assert (tmp_path / "first.bin").stat().st_mtime_ns == first_stat.st_mtime_ns
    a.throttle = b.throttle = None
    assert len(jobs(env, tmp_path)) == 2

    bad = dlman(env, "add", "-i", "-", cwd=tmp_path, input=f"{server.url('/c')}\n  out=../../etc/x\nnot-a-url\n")
    assert bad.returncode == 2 and "<stdin>:2:" in bad.stderr and "<stdin>:3:" in bad.stderr
    assert len(jobs(env, tmp_path)) == 2

    c = server.add("/c", make_data(1000, seed=2))
    piped = dlman(env, "add", "-i", "-", cwd=tmp_path, input=f"{server.url('/c')}\n  out=c.bin\n")
    assert piped.returncode == 0 and (tmp_path / "c.bin").read_bytes() == c.data


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_requeues_and_keeps_partial_data(server, make_data, tmp_path: Path, env: dict[str, str],
                                                signum: int, status: int) -> None:
    res = server.add("/big", make_data(SIZE), throttle=SLOW)
    process = start(env, "add", server.url("/big"), "-c", "1", cwd=tmp_path)
    wait_transferring(env, tmp_path, res)
    process.send_signal(signum)
    assert finish(process) == status, process.stderr.read()
    after = job(env, tmp_path)
    assert after["state"] == "queued" and after["bytes_done"] < SIZE
    assert (tmp_path / "big.part").exists() and not (tmp_path / "big").exists()
    res.throttle = None
    served = res.bytes_served
    assert dlman(env, "run", cwd=tmp_path).returncode == 0
    assert (tmp_path / "big").read_bytes() == res.data
    assert res.bytes_served - served < SIZE  # resumed, not restarted


def test_second_ctrl_c_while_stopping(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    res = server.add("/big", make_data(SIZE), throttle=SLOW)
    process = start(env, "add", server.url("/big"), "-c", "2", cwd=tmp_path)
    wait_transferring(env, tmp_path, res)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    assert finish(process) == 130
    assert job(env, tmp_path)["state"] == "queued"
    res.throttle = None
    assert dlman(env, "run", cwd=tmp_path).returncode == 0
    assert (tmp_path / "big").read_bytes() == res.data


def test_sigkill_then_run_finishes(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    res = server.add("/big", make_data(SIZE), throttle=SLOW)
    process = start(env, "add", server.url("/big"), "-c", "2", cwd=tmp_path)
    wait_transferring(env, tmp_path, res)
    process.kill()
    process.wait()
    assert job(env, tmp_path)["state"] == "active"  # left behind by a dead process
    res.throttle = None
    result = dlman(env, "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "big").read_bytes() == res.data
    assert job(env, tmp_path)["state"] == "done"


def test_two_runners_download_each_job_once(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    resources = [server.add(f"/r{i}", make_data(200_000, seed=i), throttle=400_000) for i in range(6)]
    urls = [server.url(r.path) for r in resources]
    assert dlman(env, "add", "--later", "-c", "1", *urls, cwd=tmp_path).returncode == 0
    runners = [start(env, "run", "-j", "2", cwd=tmp_path) for _ in range(2)]
    assert [finish(r, 30) for r in runners] == [0, 0]
    assert all("done " in r.stderr.read() for r in runners)  # both took part
    for res in resources:
        assert (tmp_path / res.path[1:]).read_bytes() == res.data
        assert res.bytes_served == len(res.data)
    assert {j["state"] for j in jobs(env, tmp_path)} == {"done"}


@pytest.mark.parametrize("action", [["pause", "1"], ["remove", "--delete", "1"]])
@pytest.mark.parametrize("command,status", [("add", 1), ("run", 0)])
def test_pause_or_remove_from_another_process(server, make_data, tmp_path: Path, env: dict[str, str],
                                              action: list[str], command: str, status: int) -> None:
    """`add` answers for its own jobs ending done (exit 1); for `run` a job the user paused or
    removed is not a failure (exit 0)."""
    res = server.add("/big", make_data(SIZE), throttle=SLOW)
    if command == "add":
        process = start(env, "add", server.url("/big"), "-c", "1", cwd=tmp_path)
    else:
        assert dlman(env, "add", "--later", server.url("/big"), "-c", "1", cwd=tmp_path).returncode == 0
        process = start(env, "run", cwd=tmp_path)
    wait_transferring(env, tmp_path, res)
    began = time.monotonic()
    result = dlman(env, *action, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert finish(process) == status, process.stderr.read()
    assert time.monotonic() - began < 3.0
    served = res.bytes_served
    time.sleep(0.3)
    assert res.bytes_served == served  # nothing is transferring any more
    if action[0] == "pause":
        assert job(env, tmp_path)["state"] == "paused" and (tmp_path / "big.part").exists()
    else:
        assert jobs(env, tmp_path) == []
        assert not (tmp_path / "big.part").exists() and not (tmp_path / "big.part.state").exists()


def test_same_manifest_twice_downloads_nothing_even_without_a_size(server, make_data, tmp_path: Path,
                                                                   env: dict[str, str]) -> None:
    """A done job whose file is still whole stays done when its manifest is added again: the
    second run asks the server nothing, even for a file served without a size (where no
    request could have confirmed it); a file that has gone is downloaded again."""
    sized = server.add("/sized", make_data(300_000))
    unsized = server.add("/unsized", make_data(200_000, seed=1), no_content_length=True)
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{server.url('/sized')}\n{server.url('/unsized')}\n  out=u.bin\n")
    first = dlman(env, "add", "-i", str(manifest), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "u.bin").read_bytes() == unsized.data
    asked = (len(sized.requests), len(unsized.requests))
    stamps = [(tmp_path / name).stat().st_mtime_ns for name in ("sized", "u.bin")]

    again = dlman(env, "add", "-i", str(manifest), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already complete") == 2, again.stderr
    assert (len(sized.requests), len(unsized.requests)) == asked  # nothing was asked for
    assert [(tmp_path / name).stat().st_mtime_ns for name in ("sized", "u.bin")] == stamps
    assert [j["state"] for j in jobs(env, tmp_path)] == ["done", "done"]

    (tmp_path / "u.bin").unlink()
    third = dlman(env, "add", "-i", str(manifest), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "u.bin").read_bytes() == unsized.data
    assert (len(sized.requests), len(unsized.requests)) == (asked[0], asked[1] + 1)
    assert len(jobs(env, tmp_path)) == 2


def _owner(env: dict[str, str], job_id: int) -> tuple[int, float]:
    """The owner pid and heartbeat age of a job, read straight from the database."""
    with closing(sqlite3.connect(Path(env["DLMAN_HOME"]) / "queue.db")) as conn:
        pid, beat = conn.execute("SELECT owner_pid, heartbeat FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return pid, time.time() - beat


def test_a_stopped_runner_keeps_its_job(server, make_data, tmp_path: Path, env: dict[str, str]) -> None:
    """A live process is authoritative on its host, however old its heartbeat: a `dlman run`
    stopped (SIGSTOP) far beyond STALE_AFTER keeps its job while a second runner keeps looking
    for work, and finishes it once continued: one request, every byte served once."""
    stale, tick = 1.0, 0.5
    env = dict(env, DLMAN_STALE_AFTER=str(stale))
    kept = server.add("/kept", make_data(SIZE), throttle=SLOW)
    other = server.add("/other", make_data(SIZE, seed=1), throttle=SLOW)
    assert dlman(env, "add", "--later", "-c", "1", server.url("/kept"), cwd=tmp_path).returncode == 0
    first = start(env, "run", "-j", "1", cwd=tmp_path)
    second = None
    try:
        wait_transferring(env, tmp_path, kept, 1)
        first.send_signal(signal.SIGSTOP)
        assert dlman(env, "add", "--later", "-c", "1", server.url("/other"), cwd=tmp_path).returncode == 0
        # Two slots, one job of its own: the second runner tries to claim once per tick throughout.
        second = start(env, "run", "-j", "2", cwd=tmp_path)
        wait_transferring(env, tmp_path, other, 2)
        wait_for(lambda: _owner(env, 1)[1] > stale + 6 * tick, what="the stopped owner's heartbeat to go stale")
        assert second.poll() is None
        assert _owner(env, 1)[0] == first.pid and job(env, tmp_path, 1)["state"] == "active"
        assert len(kept.requests) == 1 and kept.max_active == 1
        other.throttle = None
        assert finish(second) == 0, second.stderr.read()
        assert _owner(env, 1)[0] == first.pid
    finally:
        first.send_signal(signal.SIGCONT)
        if second is not None and second.poll() is None:
            second.kill()
    kept.throttle = None
    assert finish(first) == 0, first.stderr.read()
    assert (tmp_path / "kept").read_bytes() == kept.data
    assert len(kept.requests) == 1 and kept.bytes_served == len(kept.data)
    assert [j["state"] for j in jobs(env, tmp_path)] == ["done", "done"]
