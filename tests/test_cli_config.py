"""The config file and the environment as defaults (command line > environment > config > built-in), and
global options typed after the command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dlman import config
from dlman.cli import cli

COMMANDS = [cli.commands[name] for name in ("add", "run", "resume")]


@pytest.mark.parametrize("text, key, line", [
    ("connections = 4\n", "connections", 1),
    ("# c\n\n  limit-rate = '2M'\n", "limit-rate", 3),
    ('"on-done" = "x"\n', "on-done", 1),
    ("header = [\n 'A: b',\n]\n", "header", 1),
    ("jobs = 2\n", "connections", None),
])
def test_line_of(text: str, key: str, line: int | None) -> None:
    assert config.line_of(text, key) == line


def test_locate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.locate(None, False, {}) == (tmp_path / "xdg" / "dlman" / "config.toml", False)
    assert config.locate(None, False, {"DLMAN_CONFIG": "/e.toml"}) == (Path("/e.toml"), True)
    assert config.locate("/c.toml", False, {"DLMAN_CONFIG": "/e.toml"}) == (Path("/c.toml"), True)
    assert config.locate("/c.toml", True, {"DLMAN_CONFIG": "/e.toml"}) == (None, False)


def test_each_key_sets_the_option_of_every_command_that_has_it(tmp_path: Path) -> None:
    text = "connections = 16\njobs = 2\nheader = ['A: 1', 'B: 2']\nhttp2 = true\nlimit-rate = '1M'\n" \
           "verify-digest = false\ndir = '~/dl'\n"
    path = tmp_path / "c.toml"
    path.write_text(text)
    loaded = config.default_map(path, text, config._parse_toml(text, path), COMMANDS)
    assert loaded["add"] == {"connections": 16, "jobs": 2, "headers": ["A: 1", "B: 2"], "http2": True,
                             "limit_rate": "1M", "verify_digest": False, "directory": os.path.expanduser("~/dl")}
    assert loaded["run"] == loaded["resume"] == {"jobs": 2, "limit_rate": "1M"}


def test_every_bad_line_is_reported_with_its_line(tmp_path: Path) -> None:
    text = "\n".join([
        "connections = 100",           # 1: out of range
        "colour = 'red'",              # 2: unknown
        "output = 'x'",                # 3: not for a config file
        "http2 = 'yes'",               # 4: a flag takes true or false
        "retries = true",              # 5: a number, not a boolean
        "timeout = 'soon'",            # 6
        "limit-rate = 'fast'",         # 7: dlman's own validator
        "header = ['no colon']",       # 8
        "jobs = 2.5",                  # 9: whole numbers only
        "max-speed = {a = 1}",         # 10: a table
    ]) + "\n"
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as error:
        config.default_map(path, text, config._parse_toml(text, path), COMMANDS)
    assert [p.split(": ", 1)[0] for p in error.value.problems] == [f"{path}:{n}" for n in range(1, 11)]
    assert "unknown key 'colour' (known: " in error.value.problems[1]
    assert "cannot be set in a config file" in error.value.problems[2]


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    with pytest.raises(config.ConfigError) as error:
        config._parse_toml("jobs = 2\nconnections = = 3\n", path)
    assert error.value.problems[0].startswith(f"{path}:2: ")


# -- through the command line ------------------------------------------------------------------

@pytest.fixture
def dlman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``dlman(*args, env={})`` through click's runner, with a fresh home and no config file of the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in [n for n in os.environ if n.startswith(("DLMAN_", "SSL_CERT_"))]:
        monkeypatch.delenv(name)
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli, ["--home", str(tmp_path / "home"), *args], env=env)

    logger = logging.getLogger("dlman")
    level, handlers = logger.level, list(logger.handlers)
    yield invoke
    logger.setLevel(level)
    logger.handlers[:] = handlers


def stored(dlman, job_id: int) -> dict:
    return {j["id"]: j for j in json.loads(dlman("list", "--json").stdout)}[job_id]


def test_command_line_beats_environment_beats_config_beats_default(dlman, tmp_path: Path) -> None:
    default = tmp_path / "xdg" / "dlman" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text("connections = 3\nretries = 7\n")
    assert dlman("add", "--later", "http://h/a").exit_code == 0
    assert stored(dlman, 1)["options"] == {"connections": 3, "retries": 7}
    assert dlman("add", "--later", "http://h/b", env={"DLMAN_CONNECTIONS": "5"}).exit_code == 0
    assert stored(dlman, 2)["options"] == {"connections": 5, "retries": 7}
    assert dlman("add", "--later", "-c", "9", "http://h/c", env={"DLMAN_CONNECTIONS": "5"}).exit_code == 0
    assert stored(dlman, 3)["options"] == {"connections": 9, "retries": 7}
    assert dlman("--no-config", "add", "--later", "http://h/d").exit_code == 0
    assert stored(dlman, 4)["options"] == {}
    other = tmp_path / "other.toml"
    other.write_text("retries = 1\n")
    assert dlman("--config", str(other), "add", "--later", "http://h/e").exit_code == 0
    assert dlman("add", "--later", "http://h/f", env={"DLMAN_CONFIG": str(other)}).exit_code == 0
    assert stored(dlman, 5)["options"] == stored(dlman, 6)["options"] == {"retries": 1}


def test_headers_from_the_environment_one_per_line(dlman) -> None:
    assert dlman("add", "--later", "http://h/a", env={"DLMAN_HEADER": "A: one two\nB: 3"}).exit_code == 0
    assert stored(dlman, 1)["options"]["headers"] == ["A: one two", "B: 3"]


@pytest.mark.parametrize("args, text, message", [
    ([], "connections = 0\n", "config.toml:1: bad value for 'connections'"),
    ([], "bogus = 1\n", "config.toml:1: unknown key 'bogus'"),
    ([], "jobs = \n", "config.toml:1: "),
    (["--config", "missing.toml"], "", "missing.toml: no such config file"),
])
def test_a_bad_config_is_exit_2_with_nothing_enqueued(dlman, tmp_path: Path, args, text, message) -> None:
    default = tmp_path / "xdg" / "dlman" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text(text)
    result = dlman(*args, "add", "--later", "http://h/a")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output
    assert dlman("--no-config", "list", "--json").stdout.strip() == "[]"


def test_a_config_with_headers_readable_by_others_is_warned_about(dlman, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("header = ['Authorization: Bearer s3cret']\n")
    path.chmod(0o644)
    result = dlman("--config", str(path), "add", "--later", "http://h/a")
    assert result.exit_code == 0 and f"{path} holds headers and other users can read it" in result.stderr
    path.chmod(0o600)
    assert "other users" not in dlman("--config", str(path), "add", "--later", "http://h/b").stderr


def test_global_options_after_the_command(dlman, tmp_path: Path) -> None:
    result = dlman("add", "--later", "http://h/a", "--home", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0
    assert (tmp_path / "elsewhere" / "queue.db").exists()
    assert dlman("list", "--json").stdout.strip() == "[]"
    assert json.loads(dlman("list", "--json", "--home", str(tmp_path / "elsewhere")).stdout)[0]["id"] == 1


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", **env)
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=environ, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def test_a_config_file_applies_to_a_real_download(server, make_data, tmp_path: Path) -> None:
    res = server.add("/f", make_data(200_000))
    path = tmp_path / "c.toml"
    path.write_text("header = ['X-From-Config: yes']\nconnections = 1\ndir = 'from-config'\n")
    path.chmod(0o600)
    result = run(tmp_path, "add", server.url("/f"), DLMAN_CONFIG=str(path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-config" / "f").read_bytes() == res.data
    assert {r.headers.get("x-from-config") for r in res.requests} == {"yes"}


def test_quiet_and_verbose_after_the_command(server, make_data, tmp_path: Path) -> None:
    server.add("/f", make_data(100_000))
    quiet = run(tmp_path, "add", "-q", "-d", "q", server.url("/f"), DLMAN_CONFIG=os.devnull)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = run(tmp_path, "add", "-d", "v", server.url("/f"), "-v", DLMAN_CONFIG=os.devnull)
    assert loud.returncode == 0 and f"GET {server.url('/f')} bytes=0-" in loud.stderr
    assert run(tmp_path, "-v", "add", "-d", "w", server.url("/f"), DLMAN_CONFIG=os.devnull).stderr.count("GET ") \
        == loud.stderr.count("GET ")
