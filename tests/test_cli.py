"""The command line through click's CliRunner: parsing, usage errors, listings, masking."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dlman import queue as queue_module
from dlman.cli import cli
from dlman.progress import BarDisplay, LineDisplay, human_size
from dlman.queue import Outcome
from dlman.result import Progress
from test_queue import FakeEngine

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def dlman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``dlman(*args, input=None)`` against a fresh home, in tmp_path, with a fake engine."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith(("DLMAN_", "SSL_CERT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DLMAN_CONFIG", os.devnull)  # no config file of the user's
    monkeypatch.setattr(queue_module, "_default_engine", FakeEngine)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--home", str(tmp_path / "home"), *args], input=input)

    logger = logging.getLogger("dlman")
    level, handlers = logger.level, list(logger.handlers)
    yield invoke
    logger.setLevel(level)
    logger.handlers[:] = handlers


def jobs(dlman) -> list[dict]:
    result = dlman("list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("command", [[], ["add"], ["run"], ["list"], ["ls"], ["show"], ["pause"], ["resume"],
                                     ["remove"]])
def test_help_everywhere(dlman, command: list[str]) -> None:
    result = dlman(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_help_lists_every_feature(dlman) -> None:
    top = dlman("--help").stdout
    for text in ("--config FILE", "--no-config", "show ", "config.toml", "DLMAN_LIMIT_RATE", "_DLMAN_COMPLETE"):
        assert text in top, text
    add = dlman("add", "--help").stdout
    for text in ("--max-speed", "--no-verify-digest", "--load-cookies", "--save-cookies", "--on-done", "--on-fail",
                 "--progress [auto|bar|lines|json|none]", "-v, --verbose", "-q, --quiet", "--home"):
        assert text in add, text
    assert "--url URL" in dlman("resume", "--help").stdout and "--watch" in dlman("list", "--help").stdout


def test_version(dlman) -> None:
    result = dlman("--version")
    assert result.exit_code == 0 and result.stdout.startswith("dlman ")


@pytest.mark.parametrize("args", [
    ["add"],                                               # no URL
    ["add", "ftp://h/x"],                                  # bad scheme
    ["add", "http://h/a", "notaurl"],                      # one bad URL among good ones
    ["add", "-c", "0", "http://h/a"],
    ["add", "-c", "65", "http://h/a"],
    ["add", "-j", "0", "http://h/a"],
    ["add", "-o", "x", "http://h/a", "http://h/b"],         # -o with several URLs
    ["add", "--checksum", f"sha256:{SHA}", "http://h/a", "http://h/b"],
    ["add", "--checksum", "sha256:abc", "http://h/a"],
    ["add", "--checksum", "crc32:abcd", "http://h/a"],
    ["add", "-H", "no colon", "http://h/a"],
    ["add", "--limit-rate", "fast", "http://h/a"],
    ["add", "--retries", "-1", "http://h/a"],
    ["add", "--timeout", "0", "http://h/a"],
    ["add", "--bogus", "http://h/a"],
    ["add", "-i", "missing.txt"],
    ["add", "--max-speed", "fast", "http://h/a"],
    ["add", "--progress", "loud", "http://h/a"],
    ["add", "--on-done", "", "http://h/a"],
    ["add", "--on-fail", "'unclosed", "http://h/a"],
    ["add", "--load-cookies", "missing.txt", "http://h/a"],
    ["add", "--save-cookies", "no/such/dir/c.txt", "http://h/a"],
    ["run", "--on-done", "no-such-program-anywhere"],
    ["list", "--watch", "--json"],
    ["show"],
    ["show", "7"],
    ["resume", "7", "--url", "http://h/x"],
    ["list", "--state", "sleeping"],
    ["pause"],
    ["pause", "7"],
    ["resume", "x"],
    ["remove", "7"],
    ["frobnicate"],
])
def test_usage_errors_exit_2_and_enqueue_nothing(dlman, args: list[str]) -> None:
    result = dlman(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert jobs(dlman) == []


def test_bad_manifest_reports_every_line_and_enqueues_nothing(dlman, tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("http://h/a\n  out=../x\nhttp://h/b\n  colour=red\n")
    result = dlman("add", "--later", "-i", "m.txt", "http://h/ok")
    assert result.exit_code == 2
    assert "m.txt:2: " in result.stderr and "m.txt:4: " in result.stderr
    assert jobs(dlman) == []


def test_later_prints_ids_and_list_json_has_the_spec_keys(dlman, tmp_path: Path) -> None:
    result = dlman("add", "--later", "http://h/a.iso", "http://h/b.iso", "-d", "sub", "-c", "3")
    assert result.exit_code == 0 and result.stdout.split() == ["1", "2"]
    listed = jobs(dlman)
    assert {"id", "url", "dest", "state", "bytes_done", "total_bytes", "error"} <= set(listed[0])
    assert listed[0]["id"] == 1 and listed[0]["url"] == "http://h/a.iso" and listed[0]["state"] == "queued"
    assert listed[0]["dest"] == str(tmp_path / "sub") and listed[0]["total_bytes"] is None
    assert listed[0]["bytes_done"] == 0 and listed[0]["error"] is None


def test_secrets_are_masked_in_listings(dlman) -> None:
    dlman("add", "--later", "https://user:hunter2@h/a", "-H", "Authorization: Bearer s3cret",
          "-H", "X-Plain: visible")
    for args in (["list", "--json"], ["list"], ["-v", "ls"]):
        output = dlman(*args).stdout
        assert "s3cret" not in output and "hunter2" not in output, args
    assert "Authorization: ***" in dlman("list", "--json").stdout


def test_manifest_from_stdin_with_dirs_and_options(dlman, tmp_path: Path) -> None:
    manifest = f"http://h/a\thttp://m/a\n  out=a.iso\n  checksum=sha-256={SHA}\n  header=A: 1\n" \
               "http://h/b\n  dir=archives\n  split=2\n"
    result = dlman("add", "--later", "-i", "-", "-d", "dl", "-H", "B: 2", input=manifest)
    assert result.exit_code == 0, result.output
    a, b = jobs(dlman)
    assert a["urls"] == ["http://h/a", "http://m/a"] and a["dest"] == str(tmp_path / "dl" / "a.iso")
    assert a["options"]["checksum"] == f"sha256:{SHA}" and a["options"]["headers"] == ["B: 2", "A: 1"]
    assert b["dest"] == str(tmp_path / "dl" / "archives") and b["options"]["connections"] == 2


def test_adding_the_same_thing_twice_keeps_one_job(dlman) -> None:
    assert dlman("add", "--later", "http://h/a").stdout.split() == ["1"]
    assert dlman("add", "--later", "http://h/a").stdout.split() == ["1"]
    assert len(jobs(dlman)) == 1


def test_foreground_add_exit_status(dlman, tmp_path: Path) -> None:
    result = dlman("add", "http://h/good", "-d", "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "good").read_bytes() == b"0123456789"
    assert "done " in result.stderr
    result = dlman("add", "http://h/fail", "http://h/also")
    assert result.exit_code == 1
    assert "failed http://h/fail: not found" in result.stderr
    states = {j["url"]: j["state"] for j in jobs(dlman)}
    assert states == {"http://h/good": "done", "http://h/fail": "failed", "http://h/also": "done"}
    assert dlman("-q", "add", "http://h/good", "-d", "out").stderr == ""


def test_pause_resume_remove_commands(dlman) -> None:
    dlman("add", "--later", "http://h/a", "http://h/fail")
    assert dlman("pause", "1").exit_code == 0
    assert [j["state"] for j in jobs(dlman)] == ["paused", "queued"]
    assert dlman("list", "--state", "paused", "--json").stdout.count('"id"') == 1
    assert dlman("run").exit_code == 1  # runs only job 2, which fails
    assert dlman("pause", "2").exit_code == 1  # failed jobs cannot be paused
    assert dlman("resume", "--later", "1", "2").exit_code == 0
    assert [j["state"] for j in jobs(dlman)] == ["queued", "queued"]
    assert dlman("resume", "1").exit_code == 0
    assert [j["state"] for j in jobs(dlman)] == ["done", "queued"]
    assert dlman("remove", "1", "2").exit_code == 0
    assert jobs(dlman) == []
    assert dlman("run").exit_code == 0


def test_human_size() -> None:
    assert [human_size(n) for n in (None, 0, 1023, 1536, 3 * 1024**3)] == ["?", "0 B", "1023 B", "1.5 KiB",
                                                                          "3.0 GiB"]


def test_line_display() -> None:
    stream = io.StringIO()
    display = LineDisplay(stream)
    display.ended(Outcome(1, "done", "http://h/a", path="/d/a", size=2048))
    display.ended(Outcome(2, "failed", "http://u:pw@h/b", error="not found (HTTP 404)"))
    display.ended(Outcome(3, "interrupted", "http://h/c"))
    assert stream.getvalue().splitlines() == ["done /d/a (2.0 KiB)", "failed http://***@h/b: not found (HTTP 404)"]
    quiet = io.StringIO()
    display = LineDisplay(quiet, quiet=True)
    display.ended(Outcome(1, "done", "http://h/a", path="/d/a", size=1))
    assert quiet.getvalue() == ""


def test_bar_display_draws_a_bar_per_job_and_a_total(tmp_path: Path) -> None:
    stream = io.StringIO()
    display = BarDisplay(stream)
    jobs_ = [queue_module.Job(i, (f"http://h/{i}",), str(tmp_path), True, None, {}, "active", 0, None, None,
                              None, 0.0, 0.0) for i in (1, 2)]
    for job in jobs_:
        display.started(job)
        display.progress(job, Progress(path=tmp_path / str(job.id), downloaded=512, total=1024, connections=2))
    assert display.total_bar is not None and display.total_bar.n == 1024 and display.total_bar.total == 2048
    display.ended(Outcome(1, "done", "http://h/1", path=str(tmp_path / "1"), size=1024))
    display.close()
    assert "done " in stream.getvalue() and "total" in stream.getvalue()


def test_log_lines_and_tracebacks_are_redacted() -> None:
    from dlman.progress import setup_logging

    stream = io.StringIO()
    logger = logging.getLogger("dlman")
    level, handlers = logger.level, list(logger.handlers)
    try:
        setup_logging(verbose=1, stream=stream)
        url = "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAKEY&X-Amz-Signature=f00d"
        logger.info("GET %s", url)
        try:
            raise RuntimeError(f"{url}: boom")
        except RuntimeError:
            logger.error("job 1: unexpected error", exc_info=True)
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers
    output = stream.getvalue()
    assert "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***" in output
    assert "Traceback" in output and "RuntimeError: https://b.s3.amazonaws.com/k?X-Amz-Credential=***" in output
    assert "AKIAKEY" not in output and "f00d" not in output, output


@pytest.mark.parametrize("mode, expected", [
    ("auto", "done "),         # not a terminal: a line per job
    ("lines", "done "),
    ("bar", "%|"),             # asked for: bars even off a terminal
    ("none", ""),              # failures only
])
def test_progress_modes(dlman, mode: str, expected: str) -> None:
    result = dlman("add", "--progress", mode, "http://h/good", "-d", "out")
    assert result.exit_code == 0, result.output
    assert expected in result.stderr if expected else result.stderr == ""
    failed = dlman("add", "--progress", mode, "http://h/fail")
    assert failed.exit_code == 1 and "failed http://h/fail: not found" in failed.stderr
