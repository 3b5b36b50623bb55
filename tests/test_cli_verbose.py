"""-v shows what the engine does (requests, retries, resumes); without it, only the outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import saved_bytes, wait_for

MiB = 1 << 20


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def test_verbose_logs_requests_and_retries_quiet_run_does_not(server, make_data, tmp_path):
    data = make_data(100_000)
    server.add("/v.bin", data, statuses=[(503, {"Retry-After": "0"})])
    loud = run(tmp_path / "h1", "-v", "add", "-d", str(tmp_path / "a"), server.url("/v.bin"))
    assert loud.returncode == 0, loud.stderr
    assert "GET " + server.url("/v.bin") + " bytes=0-" in loud.stderr
    assert "HTTP 503; retry 1 of 5" in loud.stderr

    server.add("/v.bin", data, statuses=[(503, {"Retry-After": "0"})])
    plain = run(tmp_path / "h2", "add", "-d", str(tmp_path / "b"), server.url("/v.bin"))
    assert plain.returncode == 0
    assert "GET " not in plain.stderr and "retry" not in plain.stderr
    assert plain.stderr.startswith("done ")


def test_verbose_logs_a_resume(server, make_data, tmp_path):
    size = 8 * MiB
    data = make_data(size)
    res = server.add("/r.bin", data, throttle=2 * MiB, etag='"r"')
    home, out = tmp_path / "home", tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "dlman", "--home", str(home), "add", "-c", "2",
                              "-d", str(out), server.url("/r.bin")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: saved_bytes(out / "r.bin") > 0, timeout=30, what="progress saved")
    os.kill(first.pid, signal.SIGINT)
    first.communicate(timeout=20)
    assert first.returncode == 130
    res.throttle = None
    again = run(home, "-v", "run")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and (out / "r.bin").read_bytes() == data
