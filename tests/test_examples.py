"""The examples in examples/ run, each against the local fault server playing the service it needs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_bearer_token(server, make_data, tmp_path):
    data = make_data(MiB)
    res = server.add("/f", data, respond=lambda r: None if r.headers.get("authorization") == "Bearer tok"
                     else (401, {}, b"no"))
    done = example("bearer_token.py", server.url("/f"), str(tmp_path / "f"), "tok", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f").read_bytes() == data and res.requests


def test_oauth2_client_credentials_refreshes(server, make_data, tmp_path):
    data = make_data(16 * MiB)  # 2 MiB segments: the first connection's half share ends before the rest
    issued: dict[str, float] = {}

    def token(request):
        if request.headers.get("authorization") != "Basic " + base64.b64encode(b"app:s3cret").decode():
            return 401, {}, b"bad client"
        name = f"t{len(issued) + 1}"
        issued[name] = time.monotonic() + 0.5
        return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": name, "expires_in": 0.5}).encode()

    def guard(request):
        token_name = request.headers.get("authorization", "").removeprefix("Bearer ")
        return None if issued.get(token_name, 0) > time.monotonic() else (401, {}, b"expired")

    server.add("/token", respond=token)
    res = server.add("/f", data, throttle=1 * MiB, respond=guard)
    done = example("oauth2_client_credentials.py", server.url("/f"), str(tmp_path / "f"), server.url("/token"),
                   "app", "s3cret", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f").read_bytes() == data
    assert len({r.headers["authorization"] for r in res.requests if r.status == 206}) >= 2


def test_hmac_signing(server, make_data, tmp_path):
    data = make_data(4 * MiB)

    def verify(request):
        message = "\n".join([request.method, request.target, request.headers.get("range", ""),
                             request.headers.get("x-date", "")])
        good = hmac.new(b"k3y", message.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(good, request.headers.get("x-signature", "")) else (403, {}, b"bad")

    server.add("/f", data, respond=verify)
    done = example("hmac_signing.py", server.url("/f"), str(tmp_path / "f"), "k3y", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f").read_bytes() == data


def test_tqdm_progress(server, make_data, tmp_path):
    data = make_data(2 * MiB)
    server.add("/f", data, throttle=4 * MiB)
    done = example("tqdm_progress.py", server.url("/f"), str(tmp_path / "f"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f").read_bytes() == data and "2.00M" in done.stderr


def test_many_files(server, make_data, tmp_path):
    urls = []
    for i in range(3):
        server.add(f"/f{i}.bin", make_data(MiB, seed=i))
        urls.append(server.url(f"/f{i}.bin"))
    urls.append(server.url("/missing.bin"))
    done = example("many_files.py", str(tmp_path), *urls, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / f"f{i}.bin").read_bytes() == make_data(MiB, seed=i) for i in range(3))
    assert done.stdout.count("done ") == 3 and "failed" in done.stdout and "not found" in done.stdout


def test_cancel_then_resume(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/f", data, throttle=256 << 10, auto_etag=True)
    done = example("cancel.py", server.url("/f"), str(tmp_path / "f"), "1.5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout and (tmp_path / "f").read_bytes() == data
    assert sum(1 for r in res.requests if r.range == "bytes=0-") == 1  # the second download resumed


@pytest.mark.skipif(importlib.util.find_spec("fastapi") is None, reason="needs fastapi (pip install fastapi)")
def test_fastapi_background(server, make_data, tmp_path, monkeypatch):
    import asyncio

    import httpx

    sys.path.insert(0, str(ROOT))
    monkeypatch.chdir(tmp_path)
    from examples import fastapi_background as module

    data = make_data(2 * MiB)
    server.add("/f.bin", data, throttle=4 * MiB)

    async def main() -> dict:
        async with module.lifespan(module.app):
            transport = httpx.ASGITransport(app=module.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                job = (await client.post("/downloads", params={"url": server.url("/f.bin")})).json()
                for _ in range(200):
                    status = (await client.get(f"/downloads/{job['id']}")).json()
                    if status["status"] != "running":
                        return status
                    await asyncio.sleep(0.05)
        raise AssertionError("the download did not end")
    status = asyncio.run(main())
    assert status["status"] == "done" and Path(status["path"]).read_bytes() == data
