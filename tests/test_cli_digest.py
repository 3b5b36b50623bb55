"""Integrity from the server through the command line and the queue: the digest verified is stored with
the job (``list --json``, ``show``), a mismatch fails the job, ``--no-verify-digest`` is stored, a given
``--checksum`` wins, and a resumed run checks against the digest the first one was given."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dlman import Queue
from helpers import saved_bytes, wait_for

MiB = 1 << 20


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", DLMAN_CONFIG=os.devnull, PYTHONUNBUFFERED="1")
    return environ


def dlman(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=env, capture_output=True, text=True,
                          timeout=60, input=input)


def listed(env: dict[str, str]) -> dict[int, dict]:
    return {job["id"]: job for job in json.loads(dlman(env, "list", "--json").stdout)}


def test_every_header_form_is_verified_and_stored_with_the_job(server, server2, make_data, tmp_path, env) -> None:
    data = make_data(MiB)
    sha, md5 = hashlib.sha256(data), hashlib.md5(data)
    forms = {
        "repr-digest": {"Repr-Digest": f"sha-256=:{b64(sha.digest())}:"},
        "digest": {"Digest": f"SHA-256={b64(sha.digest())}"},
        "x-goog-hash": {"x-goog-hash": f"crc32c=AAAAAA==,md5={b64(md5.digest())}"},
        "x-amz-checksum-sha256": {"x-amz-checksum-sha256": b64(sha.digest())},
    }
    for name, headers in forms.items():
        server.add(f"/{name}", data, headers=headers)
    server.add("/content-digest", data, accept_ranges=False,  # about the body: counts on a whole 200
               headers={"Content-Digest": f"sha-256=:{b64(sha.digest())}:"})
    server2.add("/blob", data)
    server.add("/x-linked-etag", redirect_to=server2.url("/blob"), headers={"X-Linked-Etag": f'"{sha.hexdigest()}"'})
    names = [*forms, "content-digest", "x-linked-etag"]
    manifest = "".join(f"{server.url('/' + name)}\n  out={name}\n" for name in names)
    result = dlman(env, "add", "-d", str(tmp_path / "out"), "-i", "-", input=manifest)
    assert result.returncode == 0, result.stderr
    expected = {"x-goog-hash": f"md5:{md5.hexdigest()}"}
    for job in listed(env).values():
        name = Path(job["dest"]).name
        assert (job["digest_source"], job["digest"]) == (name, expected.get(name, f"sha256:{sha.hexdigest()}"))
    shown = dlman(env, "show", "1").stdout
    assert f"digest:    sha256:{sha.hexdigest()} (from repr-digest)" in shown


def test_a_mismatch_fails_the_job_and_no_verify_digest_is_stored(server, make_data, tmp_path, env) -> None:
    data = make_data(MiB)
    server.add("/f", data, headers={"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:"})
    failed = dlman(env, "add", "-d", str(tmp_path), server.url("/f"))
    assert failed.returncode == 1
    assert "checksum mismatch (expected by the server's repr-digest" in failed.stderr
    assert not (tmp_path / "f").exists() and listed(env)[1]["state"] == "failed"
    assert listed(env)[1]["digest"] is None

    later = dlman(env, "add", "--later", "--no-verify-digest", "-d", str(tmp_path), server.url("/f"))
    assert later.returncode == 0, later.stderr
    assert listed(env)[1]["options"]["verify_digest"] is False
    ran = dlman(env, "run")  # another process: the choice was stored with the job
    assert ran.returncode == 0, ran.stderr
    job = listed(env)[1]
    assert job["state"] == "done" and job["digest"] is None and (tmp_path / "f").read_bytes() == data


def test_the_checksum_given_wins_and_a_disagreeing_server_is_an_error(server, make_data, tmp_path, env) -> None:
    data = make_data(MiB)
    given = "sha256:" + hashlib.sha256(data).hexdigest()
    server.add("/md5", data, headers={"Digest": f"MD5={b64(hashlib.md5(b'x').digest())}"})
    ok = dlman(env, "add", "-d", str(tmp_path), "--checksum", given, server.url("/md5"))
    assert ok.returncode == 0, ok.stderr
    assert (listed(env)[1]["digest"], listed(env)[1]["digest_source"]) == (given, "given")
    server.add("/sha", data, headers={"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:"})
    clash = dlman(env, "add", "-d", str(tmp_path), "--checksum", given, server.url("/sha"))
    assert clash.returncode == 1 and "the server's repr-digest says" in clash.stderr


def test_a_resumed_run_checks_against_the_digest_the_first_run_was_given(server, make_data, tmp_path, env) -> None:
    data = make_data(4 * MiB)
    wrong = hashlib.sha256(b"not the file")
    res = server.add("/f", data, etag='"f"', throttle=MiB, headers={"Repr-Digest": f"sha-256=:{b64(wrong.digest())}:"})
    first = subprocess.Popen([sys.executable, "-m", "dlman", "add", "-c", "2", "-d", str(tmp_path), server.url("/f")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: saved_bytes(tmp_path / "f") > 0, what="progress saved")
        first.send_signal(signal.SIGINT)
        assert first.wait(30) == 130
    finally:
        first.kill()
        first.communicate()
    shown = dlman(env, "show", "1")
    assert f"expects:   sha256:{wrong.hexdigest()} (from repr-digest)" in shown.stdout
    partial = json.loads(dlman(env, "show", "--json", "1").stdout)["partial"]
    assert partial["path"] == str(tmp_path / "f.part") and partial["state_file"]["digest_source"] == "repr-digest"
    res.headers, res.throttle = {}, None  # the digest is no longer sent
    again = dlman(env, "run")
    assert again.returncode == 1 and "expected by the server's repr-digest" in again.stderr


def test_the_queue_api_stores_the_choice_and_the_digest(server, make_data, tmp_path) -> None:
    data = make_data(MiB)
    server.add("/f", data, headers={"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(data).digest())}:"})
    with Queue(tmp_path / "home") as queue:
        plain = queue.add(server.url("/f"), tmp_path / "a")
        unchecked = queue.add(server.url("/f"), tmp_path / "b", verify_digest=False)
        assert unchecked.options == {"verify_digest": False}
        assert {o.state for o in queue.run().values()} == {"done"}
        assert queue.get(plain.id).digest == "sha256:" + hashlib.sha256(data).hexdigest()
        assert queue.get(plain.id).digest_source == "repr-digest"
        assert queue.get(unchecked.id).digest is None
