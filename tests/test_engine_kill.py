"""SPEC rule 5: a kill -9 at any moment loses at most what arrived since the last save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import saved_bytes, wait_for

MiB = 1 << 20
SCRIPT = "import sys, dlman; dlman.download(sys.argv[1], sys.argv[2], connections=4, timeout=5)"


def spawn(url: str, dest: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, url, str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_mid_download_then_a_new_process_finishes_byte_identical(server, make_data, tmp_path):
    size = 24 * MiB
    data = make_data(size)
    res = server.add("/big.iso", data, throttle=2 * MiB, auto_etag=True)
    dest = tmp_path / "big.iso"

    first = spawn(server.url("/big.iso"), dest)
    try:
        wait_for(lambda: saved_bytes(dest) >= size // 3, timeout=30, what="a third saved")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not dest.exists() and dest.with_name("big.iso.part").exists()

    res.throttle = 8 * MiB
    second = spawn(server.url("/big.iso"), dest)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert out == b"" and err == b""  # the engine prints nothing
    assert dest.read_bytes() == data
    assert not dest.with_name("big.iso.part").exists()
    assert not dest.with_name("big.iso.part.state").exists()
    assert res.bytes_served < 1.3 * size


def test_ctrl_c_in_an_embedding_program_saves_state_and_resumes(server, make_data, tmp_path):
    """KeyboardInterrupt around dlman.download: prompt stop, state saved, a later call resumes."""
    size = 16 * MiB
    data = make_data(size)
    res = server.add("/int.bin", data, throttle=2 * MiB, etag='"i"')
    dest = tmp_path / "int.bin"

    first = spawn(server.url("/int.bin"), dest)
    wait_for(lambda: saved_bytes(dest) >= 2 * MiB, timeout=30, what="progress saved")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=10)
    assert first.returncode != 0 and b"KeyboardInterrupt" in err
    kept = saved_bytes(dest)
    assert kept >= 2 * MiB and dest.with_name("int.bin.part").exists() and not dest.exists()

    served_before = res.bytes_served
    res.throttle = None
    second = spawn(server.url("/int.bin"), dest)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert dest.read_bytes() == data
    assert res.bytes_served - served_before <= size - kept + 4 * MiB  # only the rest, give or take buffers
