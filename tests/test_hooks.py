"""Hooks (``--on-done``, ``--on-fail``): run without a shell, with the job's id, path and URL; a hook's
failure is logged and never changes the job's state."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlman.errors import InvalidInputError
from dlman.hooks import invocation, parse_hook, stored_hook
from dlman.queue import Outcome


def test_invocation_appends_id_path_and_masked_url_and_sets_the_environment() -> None:
    url = "https://h.example/f?X-Amz-Signature=s3cret&x=1"
    argv, env = invocation("notify --title 'a b'", Outcome(7, "failed", url, path="/d/f", error="boom"), {"A": "1"})
    assert argv == ["notify", "--title", "a b", "7", "/d/f", "https://h.example/f?X-Amz-Signature=***&x=1"]
    assert env == {"A": "1", "DLMAN_JOB_ID": "7", "DLMAN_PATH": "/d/f", "DLMAN_URL": url, "DLMAN_STATE": "failed",
                   "DLMAN_ERROR": "boom"}
    argv, env = invocation("notify", Outcome(8, "done", "http://h/f"), {})
    assert argv[-2] == "" and env["DLMAN_PATH"] == "" and env["DLMAN_ERROR"] == ""


@pytest.mark.parametrize("command, message", [
    ("", "empty hook command"),
    ("   ", "empty hook command"),
    ("notify 'unclosed", "invalid hook command"),
    ("no-such-program-anywhere --x", "hook program not found"),
])
def test_bad_hook_commands(command: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_hook(command)


def test_a_relative_program_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "my hook.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert shlex.split(stored_hook("'./my hook.sh' --loud")) == [str(script), "--loud"]
    assert stored_hook("true --x") == "true --x"  # a bare name is looked up in PATH when it runs


# -- through the command line ------------------------------------------------------------------

RECORDER = """\
#!{python}
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({{"argv": sys.argv[2:], "env": {{k: v for k, v in os.environ.items()
                                                       if k.startswith("DLMAN_")}}}}) + "\\n")
sys.exit(int(os.environ.get("HOOK_EXIT", "0")))
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "recorder"
    script.write_text(RECORDER.format(python=sys.executable))
    script.chmod(0o755)
    return script


def dlman(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", DLMAN_CONFIG=os.devnull, **env)
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=environ, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def states(tmp_path: Path) -> dict[int, str]:
    return {job["id"]: job["state"] for job in json.loads(dlman(tmp_path, "list", "--json").stdout)}


def test_hooks_get_the_job_and_never_a_shell(server, make_data, tmp_path, recorder) -> None:
    data = make_data(100_000)
    server.add("/f", data)
    log = tmp_path / "calls.jsonl"
    url = server.url("/f") + "?q=$(touch${IFS}pwned);touch%20pwned2"
    result = dlman(tmp_path, "add", "-d", "out", "--on-done", f"{recorder} {log}", "--on-fail", f"{recorder} {log}",
                   url, server.url("/missing"))
    assert result.returncode == 1, result.stderr
    done, failed = sorted(calls(log), key=lambda call: call["env"]["DLMAN_STATE"])
    assert done["argv"] == ["1", str(tmp_path / "out" / "f"), url]
    assert done["env"] == {"DLMAN_JOB_ID": "1", "DLMAN_PATH": str(tmp_path / "out" / "f"), "DLMAN_URL": url,
                           "DLMAN_STATE": "done", "DLMAN_ERROR": "", "DLMAN_HOME": str(tmp_path / "home"),
                           "DLMAN_CONFIG": os.devnull}
    assert failed["argv"][0] == "2" and failed["argv"][2] == server.url("/missing")
    assert failed["env"]["DLMAN_STATE"] == "failed" and "not found" in failed["env"]["DLMAN_ERROR"]
    assert not list(tmp_path.glob("pwned*")) and not list((tmp_path / "out").glob("pwned*"))


def test_a_failing_hook_is_logged_and_changes_nothing(server, make_data, tmp_path, recorder) -> None:
    server.add("/f", make_data(50_000))
    log = tmp_path / "calls.jsonl"
    result = dlman(tmp_path, "add", "-d", "out", "--on-done", f"{recorder} {log}", server.url("/f"), HOOK_EXIT="3")
    assert result.returncode == 0, result.stderr
    assert "job 1: hook " in result.stderr and "exited with status 3" in result.stderr
    assert len(calls(log)) == 1 and states(tmp_path) == {1: "done"}
    gone = tmp_path / "gone"
    gone.write_text("#!/bin/sh\n")
    gone.chmod(0o755)
    server.add("/g", make_data(50_000, seed=1))
    added = dlman(tmp_path, "add", "--later", "-d", "out", "--on-done", str(gone), server.url("/g"))
    assert added.returncode == 0, added.stderr
    gone.unlink()  # the hook's program is gone by the time the job runs
    ran = dlman(tmp_path, "run")
    assert ran.returncode == 0 and "could not run" in ran.stderr
    assert states(tmp_path) == {1: "done", 2: "done"}


def test_hooks_are_stored_with_the_job_and_run_gives_defaults(server, make_data, tmp_path, recorder) -> None:
    for name in ("a", "b"):
        server.add(f"/{name}", make_data(30_000))
    own, default = tmp_path / "own.jsonl", tmp_path / "default.jsonl"
    assert dlman(tmp_path, "add", "--later", "-d", "out", "--on-done", f"{recorder} {own}",
                 server.url("/a")).returncode == 0
    assert dlman(tmp_path, "add", "--later", "-d", "out", server.url("/b")).returncode == 0
    result = dlman(tmp_path, "run", "--on-done", f"{recorder} {default}")
    assert result.returncode == 0, result.stderr
    assert [call["argv"][0] for call in calls(own)] == ["1"]
    assert [call["argv"][0] for call in calls(default)] == ["2"]


def test_a_bad_hook_is_exit_2_with_nothing_enqueued(tmp_path) -> None:
    result = dlman(tmp_path, "add", "--later", "--on-done", "no-such-program-anywhere", "http://127.0.0.1:9/f")
    assert result.returncode == 2 and "hook program not found" in result.stderr
    assert states(tmp_path) == {}
