"""Proof under failure: credentials reach the server and nowhere else.

Header values (``Authorization``, ``Cookie``) and URL credentials (``user:s3cr3t@``) must never be
printed: not by ``dlman list`` (plain, ``-v``, ``--json``), not in the logs of ``add``/``run`` at
``-v`` and ``-vv``, not in error messages (404, 503 with ``--retries 0``, usage errors), not in the
per-job lines or the progress bars on a terminal. Yet the server must receive them (the job works).
The queue, which does hold them, is readable by its owner only, whatever the umask.

The same holds for credentials carried in the query string (presigned S3, CloudFront, Cloud Storage and
Azure SAS URLs, tokens and API keys): their values are shown as ``***``, their names stay readable, in
listings, logs, errors and the resume state file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers import wait_for
from test_terminal import run_in_terminal

SECRET = "s3cr3t"
BASIC = base64.b64encode(f"user:{SECRET}".encode()).decode()  # what the server gets for user:s3cr3t@
FORMS = (SECRET, BASIC)
HEADERS = ("-H", f"Authorization: Bearer {SECRET}", "-H", f"Cookie: id={SECRET}")
SIZE = 200_000


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "DLMAN_HOME"}
    environ.update(NO_PROXY="*", PYTHONUNBUFFERED="1")
    return environ


class Shell:
    """Runs dlman in tmp_path against one home, keeping every output for the leak check."""

    def __init__(self, env: dict[str, str], cwd: Path, home: Path | None = None) -> None:
        self.env, self.cwd = env, cwd
        self.home = home or cwd / "home"
        self.outputs: list[tuple[tuple[str, ...], str]] = []

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dlman", "--home", str(self.home), *args]

    def __call__(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), env=self.env, cwd=self.cwd, capture_output=True, text=True,
                                timeout=timeout)
        self.outputs.append((args, result.stdout + result.stderr))
        return result

    def leaks(self, forms: tuple[str, ...] = FORMS) -> list[str]:
        return [f"{' '.join(args)!r}: {line}" for args, text in self.outputs for line in text.splitlines()
                if any(form in line for form in forms)]


def with_credentials(url: str) -> str:
    return url.replace("://", f"://user:{SECRET}@", 1)


@pytest.mark.parametrize("verbosity,kind", [
    ([], "headers"), (["-v"], "headers"), (["-vv"], "headers"),
    ([], "url"), (["-v"], "url"), (["-vv"], "url"),
], ids=["quiet-headers", "v-headers", "vv-headers", "quiet-url", "v-url", "vv-url"])
def test_secrets_reach_the_server_and_are_never_printed(server, make_data, tmp_path, env, verbosity, kind) -> None:
    ok = server.add("/ok.bin", make_data(SIZE, seed=1))
    later = server.add("/later.bin", make_data(SIZE, seed=2))
    busy = server.add("/busy.bin", status=503)
    if kind == "headers":
        options, url = list(HEADERS), server.url
        expected = {"authorization": f"Bearer {SECRET}", "cookie": f"id={SECRET}"}
    else:
        options, url = [], lambda path: with_credentials(server.url(path))
        expected = {"authorization": f"Basic {BASIC}"}
    dlman = Shell(env, tmp_path)

    done = dlman(*verbosity, "add", *options, url("/ok.bin"), "-d", "out")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "ok.bin").read_bytes() == ok.data
    assert ok.requests, "no request reached the server"
    for record in ok.requests:
        assert {name: record.headers.get(name) for name in expected} == expected, record.headers

    missing = dlman(*verbosity, "add", *options, url("/nothing-here"), "-d", "out")
    assert missing.returncode == 1
    assert any(line.startswith("failed ") and "not found" in line for line in missing.stderr.splitlines()), \
        missing.stderr
    unavailable = dlman(*verbosity, "add", *options, "--retries", "0", url("/busy.bin"), "-d", "out")
    assert unavailable.returncode == 1
    assert any(line.startswith("failed ") and "503" in line for line in unavailable.stderr.splitlines()), \
        unavailable.stderr
    assert len(busy.requests) == 1
    assert all(record.headers.get("authorization") == expected["authorization"] for record in busy.requests)
    if not verbosity:  # without -v an error is one line and nothing else
        assert len(missing.stderr.splitlines()) == 1 and len(unavailable.stderr.splitlines()) == 1

    assert dlman(*verbosity, "add", "--later", *options, url("/later.bin"), "-d", "out").returncode == 0
    run = dlman(*verbosity, "run")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "later.bin").read_bytes() == later.data
    assert later.requests and all(r.headers.get("authorization") == expected["authorization"]
                                  for r in later.requests)

    for args in (["list"], ["ls", "--json"], ["-v", "list"], ["-vv", "list", "--json"], ["list", "--state", "failed"]):
        assert dlman(*args).returncode == 0
    listing = json.loads(dlman("list", "--json").stdout)
    assert [job["state"] for job in listing] == ["done", "failed", "failed", "done"]
    for job in listing:
        if kind == "headers":
            assert job["options"]["headers"] == ["Authorization: ***", "Cookie: ***"]
        else:
            assert job["url"].startswith("http://***@127.0.0.1:")
    assert all(job["error"] for job in listing if job["state"] == "failed")
    assert dlman.leaks() == []


def test_usage_errors_do_not_echo_secrets(tmp_path, env) -> None:
    dlman = Shell(env, tmp_path)
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{with_credentials('http://h:99999/x')}\n"
                        f"http://h/y\n  header=Authorization {SECRET}\n"
                        f"http://h/z\n  header=Cookie: a={SECRET}\n  colour={SECRET}\n")
    attempts = [
        ["add", "--later", "-H", f"Authorization {SECRET}", "http://h/a"],  # no colon
        ["add", "--later", "-H", f"Authorization;Bearer {SECRET}", "http://h/a"],
        ["add", "--later", with_credentials("http://h:99999/x")],  # bad port
        ["add", "--later", with_credentials("http://h/x y")],  # whitespace
        ["add", "--later", with_credentials("ftp://h/x")],  # bad scheme
        ["add", "--later", "-i", str(manifest)],
    ]
    for args in attempts:
        result = dlman(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert dlman("list", "--json").stdout.strip() == "[]"
    # The manifest's lines 3 and 6 are bad (1 too): the report names them without their values.
    report = dlman.outputs[-2][1]
    assert "m.txt:1:" in report and "m.txt:3:" in report and "m.txt:6:" in report, report
    assert dlman.leaks() == []


def test_progress_bars_on_a_terminal_hide_secrets(server, make_data, tmp_path, env) -> None:
    a = server.add("/a.bin", make_data(600_000, seed=3), throttle=400_000)
    b = server.add("/b.bin", make_data(600_000, seed=4), throttle=400_000)
    env.update(TERM="xterm", COLUMNS="120")
    shell = Shell(env, tmp_path)
    status, output = run_in_terminal(
        shell.argv("add", *HEADERS, "-c", "1", with_credentials(server.url("/a.bin")), server.url("/b.bin"),
                   "-d", "out"), env, tmp_path, rows=40, cols=120)
    assert status == 0, output
    assert (tmp_path / "out" / "a.bin").read_bytes() == a.data and (tmp_path / "out" / "b.bin").read_bytes() == b.data
    # tqdm drew a bar per file and the total bar, named after the file, never after the URL.
    assert "a.bin:" in output and "b.bin:" in output and "total:" in output and "%|" in output, output
    assert "Bearer" in b.requests[0].headers.get("authorization", "")
    leaked = [form for form in FORMS if form in output]
    assert leaked == [], output


def test_pause_and_remove_lines_hide_secrets(server, make_data, tmp_path, env) -> None:
    slow = [server.add(f"/slow{i}.bin", make_data(400_000, seed=10 + i), throttle=100_000) for i in range(2)]
    dlman = Shell(env, tmp_path)
    added = dlman("add", "--later", *HEADERS, "-c", "1", *(with_credentials(server.url(r.path)) for r in slow),
                  "-d", "out")
    assert added.returncode == 0 and added.stdout.split() == ["1", "2"], added.stderr
    runner = subprocess.Popen(dlman.argv("-v", "run", "-j", "2"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def both_active() -> bool:
            jobs = json.loads(dlman("list", "--json").stdout)
            return [j["state"] for j in jobs] == ["active", "active"] and all(r.bytes_served > 50_000 for r in slow)

        wait_for(both_active, timeout=20, what="both jobs to be under way")
        assert dlman("pause", "1").returncode == 0
        assert dlman("remove", "--delete", "2").returncode == 0
        stdout, stderr = runner.communicate(timeout=20)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    dlman.outputs.append((("-v", "run"), stdout + stderr))
    assert runner.returncode == 0, stderr  # for `run`, a job the user paused or removed did not fail
    assert "paused job 1 (http://***@127.0.0.1:" in stderr and "removed job 2 (http://***@127.0.0.1:" in stderr
    assert dlman("-v", "list").returncode == 0
    assert dlman.leaks() == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_queue_files_are_owner_only_whatever_the_umask(server, make_data, tmp_path, env) -> None:
    res = server.add("/file.bin", make_data(600_000, seed=5), throttle=200_000)
    home = tmp_path / "data" / "dlman"  # parents missing too
    dlman = Shell(env, tmp_path, home)

    def permissive(*args: str) -> list[str]:
        return ["sh", "-c", 'umask 000 && exec "$@"', "sh", *dlman.argv(*args)]

    added = subprocess.run(permissive("add", "--later", *HEADERS, "-c", "1", server.url("/file.bin"), "-d", "out"),
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert added.returncode == 0, added.stderr
    assert mode(home) == 0o700, oct(mode(home))
    db = home / "queue.db"
    assert mode(db) == 0o600, oct(mode(db))
    with sqlite3.connect(db) as conn:  # why it matters: the queue holds the header values
        (options,) = conn.execute("SELECT options FROM jobs").fetchone()
    assert SECRET in options
    conn.close()

    runner = subprocess.Popen(permissive("run"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: res.bytes_served > 100_000 and (home / "queue.db-wal").exists()
                 and (home / "queue.db-shm").exists(), timeout=20, what="the run to be under way in WAL mode")
        listing = subprocess.run(permissive("list"), env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=30)
        assert listing.returncode == 0, listing.stderr
        files = sorted(home.iterdir())
        assert {p.name for p in files} >= {"queue.db", "queue.db-wal", "queue.db-shm"}
        assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
        assert mode(home) == 0o700
        stdout, stderr = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, stderr
    assert (tmp_path / "out" / "file.bin").read_bytes() == res.data
    assert all(mode(p) == 0o600 for p in home.iterdir())


def test_resume_state_does_not_expose_url_credentials(server, make_data, tmp_path, env) -> None:
    res = server.add("/big.bin", make_data(600_000, seed=6), throttle=100_000)
    dlman = Shell(env, tmp_path)
    process = subprocess.Popen(dlman.argv("add", "-c", "1", with_credentials(server.url("/big.bin")), "-d", "out"),
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "out" / "big.bin.part.state"
    try:
        wait_for(lambda: state.exists() and res.bytes_served > 100_000, timeout=20, what="a saved resume state")
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = state.read_text()
    assert SECRET not in text or mode(state) & 0o077 == 0, (oct(mode(state)), text)


# -- credentials in the query string ----------------------------------------------------------------

# (name, value, secret) as the services write them; percent-encoded where they are.
S3_PRESIGNED = [
    ("X-Amz-Algorithm", "AWS4-HMAC-SHA256", False),
    ("X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request", True),
    ("X-Amz-Date", "20250101T000000Z", False),
    ("X-Amz-Expires", "3600", False),
    ("X-Amz-Security-Token", "IQoJb3JpZ2luX2VjEPr%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQD", True),
    ("X-Amz-SignedHeaders", "host", False),
    ("X-Amz-Signature", "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7", True),
]
OTHER_SIGNED = [
    ("Policy", "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cCJ9XX0_", True),  # CloudFront
    ("Signature", "Nql641NHEUkUaXQHZINK1FZ~SYeUSoBJMxjdgqrzIdzV2gyEXPDNv0pYdWJkflDKJ3xIu7l", True),
    ("Key-Pair-Id", "K2JCJMDEHXQW5F", True),
    ("X%2DGoog%2DSignature", "8f3c0d1e2b4a69587c6d5e4f3a2b1c0d9e8f7a6b", True),  # Cloud Storage, encoded name
    ("x-goog-credential", "svc%40project.iam.gserviceaccount.com%2F20250101", True),
    ("sv", "2022-11-02", False),  # Azure SAS: only sig is secret
    ("se", "2025-01-02T00%3A00%3A00Z", False),
    ("sig", "Zm9vYmFyYmF6cXV4%2BcXV1eA%3D%3D", True),
    ("ACCESS_TOKEN", "ya29.a0AfH6SMBxTOKENxyz", True),
    ("api_key", "AIzaSyA-EXAMPLE-KEY-1234", True),
    ("versionId", "3HL4kqtJlcpXroDTDmJ", False),
]
QUERY_SECRETS = tuple(value for _, value, secret in S3_PRESIGNED + OTHER_SIGNED if secret)
QUERY_FORMS = QUERY_SECRETS + tuple(unquote(value) for value in QUERY_SECRETS)


def signed(url: str, params: list[tuple[str, str, bool]]) -> str:
    return url + "?" + "&".join(f"{name}={value}" for name, value, _ in params)


def assert_masked(url: str, params: list[tuple[str, str, bool]]) -> None:
    """Every parameter is still there by name; secret values are ``***``, the others as given."""
    query = url.partition("?")[2]
    assert query == "&".join(f"{name}={'***' if secret else value}" for name, value, secret in params), url


def test_query_string_credentials_reach_the_server_and_are_never_printed(server, make_data, tmp_path, env) -> None:
    s3 = server.add("/bucket/s3.iso", make_data(SIZE, seed=21))
    cdn = server.add("/dist/cdn.iso", make_data(SIZE, seed=22))
    moved = server.add("/bucket/moved.iso", make_data(SIZE, seed=23))
    server.add("/api/get", redirect_to=signed(server.url("/bucket/moved.iso"), S3_PRESIGNED))
    server.add("/busy.iso", status=503)
    big = server.add("/bucket/big.iso", make_data(600_000, seed=24), throttle=100_000)
    dlman = Shell(env, tmp_path)

    done = dlman("-vv", "add", signed(server.url("/bucket/s3.iso"), S3_PRESIGNED), "-d", "out")
    assert done.returncode == 0, done.stderr
    assert "HTTP Request: GET" in done.stderr and "X-Amz-Signature=***" in done.stderr  # httpx's own lines
    assert dlman("-v", "add", signed(server.url("/dist/cdn.iso"), OTHER_SIGNED), "-d", "out").returncode == 0
    redirected = dlman("-vv", "add", server.url("/api/get"), "-d", "out")
    assert redirected.returncode == 0 and "X-Amz-Signature=***" in redirected.stderr, redirected.stderr
    for res, name, params in ((s3, "s3.iso", S3_PRESIGNED), (cdn, "cdn.iso", OTHER_SIGNED),
                              (moved, "get", S3_PRESIGNED)):  # named after the URL given
        assert (tmp_path / "out" / name).read_bytes() == res.data
        assert res.requests and all(record.path == signed(res.path, params) for record in res.requests), \
            [record.path for record in res.requests]

    missing = dlman("add", signed(server.url("/bucket/missing.iso"), S3_PRESIGNED), "-d", "out")
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()
    assert line.startswith("failed ") and line.endswith("not found (HTTP 404)"), line
    assert_masked(line.split()[1].rstrip(":"), S3_PRESIGNED)
    busy = dlman("-v", "add", "--retries", "0", signed(server.url("/busy.iso"), OTHER_SIGNED), "-d", "out")
    assert busy.returncode == 1 and "503" in busy.stderr, busy.stderr

    # Interrupted: the resume state names the URL without its credentials, and still serves the resume.
    process = subprocess.Popen(dlman.argv("add", "-c", "1", signed(server.url("/bucket/big.iso"), S3_PRESIGNED),
                                          "-d", "out"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    state = tmp_path / "out" / "big.iso.part.state"
    try:
        wait_for(lambda: state.exists() and big.bytes_served > 200_000, timeout=20, what="a saved resume state")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    dlman.outputs.append((("add", "interrupted"), stdout + stderr))
    assert process.returncode == 130, stderr
    saved = json.loads(state.read_text())
    dlman.outputs.append((("cat", state.name), state.read_text()))
    assert_masked(saved["url"], S3_PRESIGNED)
    big.throttle = None
    resumed = dlman("-v", "run")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "out" / "big.iso").read_bytes() == big.data
    assert big.requests[-1].range not in (None, "bytes=0-"), [r.range for r in big.requests]  # not started over

    for args in (["list"], ["ls", "--json"], ["-v", "list"], ["-vv", "list", "--json"], ["list", "--state", "failed"]):
        assert dlman(*args).returncode == 0
    listing = json.loads(dlman("list", "--json").stdout)
    assert [job["state"] for job in listing] == ["done", "done", "done", "failed", "failed", "done"]
    for job, params in zip(listing, [S3_PRESIGNED, OTHER_SIGNED, None, S3_PRESIGNED, OTHER_SIGNED, S3_PRESIGNED]):
        if params:
            assert_masked(job["url"], params)
    assert all("***" in job["error"] for job in listing if job["state"] == "failed")
    assert dlman.leaks(QUERY_FORMS) == []
