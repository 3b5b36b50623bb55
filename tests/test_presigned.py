"""Presigned URLs (S3, GCS, CloudFront): they expire, sometimes in the middle of a download.

The fault server plays the object store: ``enforce_expiry`` answers 403 with S3's XML body
(``Request has expired``) once the URL's ``expires`` has passed, and ``presign_ttl`` makes a
resource a redirector that hands out freshly signed URLs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import dlman
from helpers import fetch

MiB = 1 << 20


def signed(server, path: str, ttl: float) -> str:
    return server.url(path) + f"?expires={time.time() + ttl:.3f}&X-Amz-Signature=0123abcd"


def test_running_connections_finish_after_the_url_expired(server, make_data, tmp_path):
    """Takeovers refused with 403 go back to the connections still streaming their ranges."""
    data = make_data(8 * MiB)
    # The first connection is slow, so the others take over parts of its range after the expiry.
    res = server.add("/obj", data, etag='"o"', enforce_expiry=True, throttle=2 * MiB,
                     first_range_throttle=256 << 10)
    fetch(signed(server, "/obj", 0.8), tmp_path / "obj", connections=4)
    assert (tmp_path / "obj").read_bytes() == data
    assert any(r.status == 403 for r in res.requests)


def test_an_expired_url_fails_only_when_no_connection_can_go_on_and_says_so(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    # The signature holds for the first two requests (both connections' first ranges), no more.
    res = server.add("/obj", data, etag='"o"', expire_after=2, throttle=1 * MiB)
    dest = tmp_path / "obj"
    with pytest.raises(dlman.HTTPStatusError) as failure:
        fetch(signed(server, "/obj", 60), dest, connections=2)
    message = str(failure.value)
    assert "HTTP 403: Request has expired" in message and "probably expired" in message
    assert "0123abcd" not in message  # the signature is a credential: masked
    assert not dest.exists() and dest.with_name("obj.part.state").exists()
    served = res.bytes_served

    # A fresh URL for the same object resumes the partial data: the state belongs to the file.
    res.expire_after = None
    fetch(signed(server, "/obj", 60), dest, connections=2)
    assert dest.read_bytes() == data
    assert res.bytes_served - served < len(data) - MiB  # the rest, not the whole file again


def test_the_cli_reports_an_expired_url_and_a_fresh_one_resumes(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/obj", data, etag='"o"', expire_after=2, throttle=1 * MiB)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*")

    def dlman_add(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dlman", "add", "-c", "2", "--timeout", "5", "-o", "obj",
                               "-d", str(tmp_path), url], env=env, capture_output=True, text=True, timeout=60)

    expired = dlman_add(signed(server, "/obj", 60))  # valid for the first two requests only
    assert expired.returncode == 1
    assert "Request has expired" in expired.stderr and "probably expired" in expired.stderr
    assert "0123abcd" not in expired.stderr
    served, res.expire_after = res.bytes_served, None
    fresh = dlman_add(signed(server, "/obj", 60))
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "obj").read_bytes() == data
    assert "starting over" not in fresh.stderr
    assert res.bytes_served - served < len(data) - MiB  # the rest, not the whole file again
