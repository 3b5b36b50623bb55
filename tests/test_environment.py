"""Environment conventions shared with curl and wget: proxies, NO_PROXY and ~/.netrc."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faultserver import FaultServer


def dlman(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "dlman", "--home", str(home), *args],
                          capture_output=True, text=True, env=full_env, timeout=60)


def test_http_proxy_is_used(server, tmp_path):
    """The request goes to the proxy, addressed to the origin (absolute form, Host header)."""
    proxied = server.add("/p.bin", b"through the proxy")
    result = dlman(tmp_path / "home", "add", "-d", str(tmp_path), "--retries", "0",
                   "http://origin.dlman.invalid/p.bin", env={"HTTP_PROXY": server.base_url})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p.bin").read_bytes() == b"through the proxy"
    assert proxied.requests[0].headers["host"] == "origin.dlman.invalid"


def test_no_proxy_bypasses_the_proxy(server, tmp_path):
    server.add("/d.bin", b"direct")
    with FaultServer() as proxy:
        result = dlman(tmp_path / "home", "add", "-d", str(tmp_path), server.url("/d.bin"),
                       env={"HTTP_PROXY": proxy.base_url, "NO_PROXY": "127.0.0.1"})
        assert proxy.requests == []
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d.bin").read_bytes() == b"direct"


@pytest.mark.parametrize("where", ["home", "NETRC"])
def test_netrc_credentials_are_sent(server, tmp_path, where):
    resource = server.add("/n.bin", b"authorised")
    netrc = tmp_path / ("fakehome/.netrc" if where == "home" else "credentials")
    netrc.parent.mkdir(exist_ok=True)
    netrc.write_text("machine 127.0.0.1 login alice password s3cr3t\n")
    netrc.chmod(0o600)
    env = {"HOME": str(tmp_path / "fakehome")} if where == "home" else {"NETRC": str(netrc)}
    result = dlman(tmp_path / "home", "add", "-d", str(tmp_path), server.url("/n.bin"), env=env)
    assert result.returncode == 0, result.stderr
    expected = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
    assert resource.requests[0].headers["authorization"] == expected
    assert "s3cr3t" not in result.stderr + result.stdout


def test_http2_through_a_proxy_falls_back_to_http11_with_a_warning(server, tmp_path):
    """httpx's own HTTP/2 connections (used through proxies) stall on cut streams: HTTP/1.1 instead."""
    server.add("/h.bin", b"through the proxy")
    result = dlman(tmp_path / "home", "add", "--http2", "-d", str(tmp_path), "--retries", "0",
                   "http://origin.dlman.invalid/h.bin", env={"HTTP_PROXY": server.base_url})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "h.bin").read_bytes() == b"through the proxy"
    assert "using HTTP/1.1 instead of HTTP/2" in result.stderr
