"""Real ``dlman`` processes against the local fault server: signals, crashes, two runners, manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
def test_pause_or_remove_from_another_process(server, make_data, tmp_path: Path, env: dict[str, str],
                                              action: list[str]) -> None:
    res = server.add("/big", make_data(SIZE), throttle=SLOW)
    process = start(env, "add", server.url("/big"), "-c", "1", cwd=tmp_path)
    wait_transferring(env, tmp_path, res)
    began = time.monotonic()
    result = dlman(env, *action, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert finish(process) == 1  # its job did not end done
    assert time.monotonic() - began < 3.0
    served = res.bytes_served
    time.sleep(0.3)
    assert res.bytes_served == served  # nothing is transferring any more
    if action[0] == "pause":
        assert job(env, tmp_path)["state"] == "paused" and (tmp_path / "big.part").exists()
    else:
        assert jobs(env, tmp_path) == []
        assert not (tmp_path / "big.part").exists() and not (tmp_path / "big.part.state").exists()
