"""What a job keeps and what a run gives it: a per-download speed limit, a fresh URL for an expired one,
the CA bundle in force when it was added, and the live options only a run can hold (issue: a queue
stores only what can be stored)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dlman import InvalidInputError, Queue
from dlman.ratelimit import RateLimiter
from faultserver import FaultServer

MiB = 1 << 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", DLMAN_CONFIG=os.devnull, PYTHONUNBUFFERED="1")
    return environ


def dlman(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=env, capture_output=True, text=True,
                          timeout=90)


def listed(env: dict[str, str]) -> dict[int, dict]:
    return {job["id"]: job for job in json.loads(dlman(env, "list", "--json").stdout)}


# -- --max-speed ---------------------------------------------------------------------------------

def test_a_download_limit_also_spends_from_the_run_limit() -> None:
    run, own = RateLimiter(10_000), RateLimiter(1_000)
    own.within = run
    asyncio.run(own.acquire(600))
    assert own.bucket._tokens == pytest.approx(400, abs=5) and run.bucket._tokens == pytest.approx(9_400, abs=50)


def test_max_speed_limits_its_own_download_only(server, make_data, tmp_path, env) -> None:
    slow, fast = server.add("/slow", make_data(MiB)), server.add("/fast", make_data(2 * MiB, seed=1))
    assert dlman(env, "add", "--later", "--max-speed", "256K", "-d", str(tmp_path), server.url("/slow")).returncode == 0
    assert dlman(env, "add", "--later", "-d", str(tmp_path), server.url("/fast")).returncode == 0
    assert listed(env)[1]["options"]["max_speed"] == 256 * 1024
    began = time.monotonic()
    result = dlman(env, "run", "-j", "2", "--progress", "json")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    ends = [e["id"] for e in map(json.loads, result.stderr.splitlines()) if e["event"] == "end"]
    assert ends == [2, 1]  # the unlimited job, twice as big, ends first
    # 1 MiB at 256 KiB/s after a burst of one second's worth: about 3 s (bounds generous).
    assert took > 2.0
    assert (tmp_path / "slow").read_bytes() == slow.data and (tmp_path / "fast").read_bytes() == fast.data


@pytest.mark.parametrize("value", ["fast", "0", "-1K"])
def test_a_bad_max_speed_is_exit_2(tmp_path, env, value) -> None:
    result = dlman(env, "add", "--later", "--max-speed", value, "http://127.0.0.1:9/f")
    assert result.returncode == 2 and "--max-speed" in result.stderr
    assert listed(env) == {}


# -- resume ID --url NEW --------------------------------------------------------------------------

def signed(server: FaultServer, path: str, ttl: float) -> str:
    return server.url(path) + f"?expires={time.time() + ttl:.3f}&X-Amz-Signature=0123abcd"


def test_resume_with_a_fresh_url_reuses_the_partial_data(server, make_data, tmp_path, env) -> None:
    data = make_data(4 * MiB)
    res = server.add("/obj", data, etag='"o"', enforce_expiry=True, throttle=512 << 10)
    expired = dlman(env, "add", "-c", "2", "--timeout", "5", "-o", "obj", "-d", str(tmp_path),
                    signed(server, "/obj", 1.5))
    assert expired.returncode == 1 and "probably expired" in expired.stderr
    served = res.bytes_served
    fresh = signed(server, "/obj", 60)
    resumed = dlman(env, "resume", "1", "--url", fresh)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "obj").read_bytes() == data and "starting over" not in resumed.stderr
    assert res.bytes_served - served < len(data) - MiB  # the rest, not the whole file again
    job = listed(env)[1]
    assert job["state"] == "done" and job["url"].startswith(server.url("/obj?expires="))
    assert "0123abcd" not in job["url"]  # the signature is a credential: masked


def test_resume_with_a_url_of_another_file_starts_over(server, make_data, tmp_path, caplog) -> None:
    old, new = make_data(2 * MiB), make_data(2 * MiB, seed=9)
    server.add("/old", old, etag='"1"', drop_after=MiB)  # every answer breaks off after 1 MiB
    server.add("/new", new, etag='"2"')
    with Queue(tmp_path / "home") as queue:
        job = queue.add(server.url("/old"), tmp_path / "f", retries=0, connections=1)
        other = queue.add(server.url("/new"), tmp_path / "g")
        assert queue.run(ids=[job.id])[job.id].state == "failed"
        assert (tmp_path / "f.part.state").exists()
        with pytest.raises(InvalidInputError, match="one job at a time"):
            queue.resume(job.id, other.id, url=server.url("/new"))
        resumed = queue.resume(job.id, url=[server.url("/new")])
        assert resumed[0].urls == (server.url("/new"),) and resumed[0].state == "queued"
        with caplog.at_level("WARNING", logger="dlman"):
            assert queue.run(ids=[job.id])[job.id].state == "done"
        assert (tmp_path / "f").read_bytes() == new
        assert "starting over" in caplog.text
        with pytest.raises(InvalidInputError, match="is done"):
            queue.resume(job.id, url=server.url("/old"))


@pytest.mark.parametrize("args, message", [
    (["resume", "1", "2", "--url", "http://h/x"], "--url is for one job at a time"),
    (["resume", "1", "--url", "ftp://h/x"], "invalid URL"),
    (["resume", "7", "--url", "http://h/x"], "no job with id 7"),
])
def test_bad_resume_urls_are_exit_2(tmp_path, env, args, message) -> None:
    assert dlman(env, "add", "--later", "http://127.0.0.1:9/a", "http://127.0.0.1:9/b").returncode == 0
    result = dlman(env, *args)
    assert result.returncode == 2 and message in result.stderr
    assert [job["url"] for job in listed(env).values()] == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]


# -- the CA bundle in force is stored with the job ---------------------------------------------------



def test_ssl_cert_file_at_add_later_is_used_by_a_later_run(tls_server, ca, make_data, tmp_path, env) -> None:
    data = make_data(300_000)
    tls_server.add("/a", data)
    tls_server.add("/b", data)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with_ca = dict(env, SSL_CERT_FILE=str(bundle))
    assert dlman(with_ca, "add", "--later", "-d", str(tmp_path), tls_server.url("/a")).returncode == 0
    assert dlman(env, "add", "--later", "-d", str(tmp_path), tls_server.url("/b")).returncode == 0
    assert listed(env)[1]["options"]["verify"] == str(bundle) and "verify" not in listed(env)[2]["options"]
    ran = dlman(env, "run")  # another shell: no SSL_CERT_FILE
    assert ran.returncode == 1
    assert {job["id"]: job["state"] for job in listed(env).values()} == {1: "done", 2: "failed"}
    assert (tmp_path / "a").read_bytes() == data
    assert "certificate" in listed(env)[2]["error"]


# -- live options: never stored, given to a run ----------------------------------------------------

@pytest.mark.parametrize("option", [
    {"auth": ("me", "pw")},
    {"client": object()},
    {"event_hooks": {"request": []}},
    {"cookies": httpx.Cookies({"a": "b"})},
    {"proxy": "http://proxy.example:3128"},
    {"cert": "client.pem"},
    {"on_progress": print},
    {"verify": ssl.create_default_context()},
    {"timeout": httpx.Timeout(5.0)},
])
def test_the_queue_refuses_what_it_cannot_store(tmp_path, option) -> None:
    with Queue(tmp_path / "home") as queue:
        with pytest.raises(InvalidInputError, match=r"the queue cannot store .*engine_options="):
            queue.add("http://h/f", tmp_path, **option)
        assert queue.list() == []


def test_engine_options_go_to_every_download_of_the_run(server, make_data, tmp_path) -> None:
    data = make_data(3 * MiB)
    res = server.add("/f", data, etag='"f"')
    seen: list[str] = []

    async def log_request(request: httpx.Request) -> None:
        seen.append(request.headers.get("range", ""))

    with Queue(tmp_path / "home") as queue:
        job = queue.add(server.url("/f"), tmp_path / "f", connections=3)
        with pytest.raises(InvalidInputError, match="limit_rate"):
            queue.run(engine_options={"limit_rate": "1M"})
        outcomes = queue.run(engine_options={"auth": ("me", "pw"), "event_hooks": {"request": [log_request]}})
    assert outcomes[job.id].state == "done" and (tmp_path / "f").read_bytes() == data
    expected = "Basic " + base64.b64encode(b"me:pw").decode()
    assert len(res.requests) > 1 and {r.headers.get("authorization") for r in res.requests} == {expected}
    assert len(seen) == len(res.requests)
