"""Cookie files (``--load-cookies``, ``--save-cookies``): the Netscape format, and cookies only to their own origin.

The pure parts are table-driven; the rest goes through the real ``dlman`` command against two
local servers that are two hosts for cookies: ``127.0.0.1`` and ``localhost``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dlman.cookies import CookieFileError, format_cookies, make_jar, parse_cookies, parse_line

NOW = 1_700_000_000
LATER = str(NOW + 86400)


def line(*fields: str) -> str:
    return "\t".join(fields)


@pytest.mark.parametrize("text, expected", [
    (line("example.org", "FALSE", "/", "FALSE", LATER, "sid", "abc"),
     ("example.org", False, "/", False, int(LATER), "sid", "abc", False)),
    (line(".example.org", "TRUE", "/docs", "TRUE", "0", "s", "v=1"),
     (".example.org", True, "/docs", True, None, "s", "v=1", False)),
    ("#HttpOnly_" + line("Example.ORG", "false", "/", "true", LATER + ".5", "h", "x"),
     ("example.org", False, "/", True, int(LATER), "h", "x", True)),
    (line("example.org", "FALSE", "/", "FALSE", "0", "empty"),          # the TAB before an empty value dropped
     ("example.org", False, "/", False, None, "empty", "", False)),
])
def test_parse_line(text: str, expected: tuple) -> None:
    cookie = parse_line(text)
    assert (cookie.domain, cookie.domain_specified, cookie.path, cookie.secure, cookie.expires, cookie.name,
            cookie.value, cookie.has_nonstandard_attr("HttpOnly")) == expected


@pytest.mark.parametrize("text, message", [
    ("example.org FALSE / FALSE 0 sid abc", "expected 7 TAB-separated fields"),
    (line("example.org", "FALSE", "/", "FALSE", "0", "a", "b", "c"), "found 8"),
    (line("", "FALSE", "/", "FALSE", "0", "a", "b"), "empty domain"),
    (line("example.org", "maybe", "/", "FALSE", "0", "a", "b"), "include subdomains must be TRUE or FALSE"),
    (line("example.org", "FALSE", "docs", "FALSE", "0", "a", "b"), "path must start with '/'"),
    (line("example.org", "FALSE", "/", "yes", "0", "a", "b"), "secure must be TRUE or FALSE"),
    (line("example.org", "FALSE", "/", "FALSE", "soon", "a", "b"), "expiry must be a number"),
    (line("example.org", "FALSE", "/", "FALSE", "0", "", "b"), "empty cookie name"),
])
def test_bad_lines_are_named_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(CookieFileError) as error:
        parse_cookies(f"# Netscape HTTP Cookie File\n\n{text}\n", "c.txt", now=NOW)
    assert error.value.problems[0].startswith("c.txt:3: ") and message in error.value.problems[0]


def test_comments_blank_lines_and_expired_cookies_are_skipped() -> None:
    text = "\n".join(["# Netscape HTTP Cookie File", "# a comment", "",
                      line("a.example", "FALSE", "/", "FALSE", str(NOW - 1), "old", "1"),
                      line("a.example", "FALSE", "/", "FALSE", "0", "session", "2"),
                      line("a.example", "FALSE", "/", "FALSE", LATER, "kept", "3")])
    assert [c.name for c in parse_cookies(text, "c.txt", now=NOW)] == ["session", "kept"]


def test_format_then_parse_gives_the_same_cookies() -> None:
    text = "\n".join([line(".a.example", "TRUE", "/", "TRUE", LATER, "x", "1"),
                      "#HttpOnly_" + line("b.example", "FALSE", "/p", "FALSE", "0", "y", "")])
    cookies = parse_cookies(text, "c.txt", now=NOW)
    again = parse_cookies(format_cookies(cookies), "c.txt", now=NOW)
    assert [vars(c) for c in again] == [vars(c) for c in cookies]


def sent(cookies: str, url: str) -> str | None:
    """The Cookie header a jar of ``cookies`` (file lines) adds to a request for ``url``."""
    jar = make_jar(parse_cookies(cookies, "c.txt"))
    request = urllib.request.Request(url)
    jar.add_cookie_header(request)
    return request.get_header("Cookie")


@pytest.mark.parametrize("cookie, url, expected", [
    (line("example.org", "FALSE", "/", "FALSE", "0", "a", "1"), "http://example.org/f", "a=1"),
    (line("example.org", "FALSE", "/", "FALSE", "0", "a", "1"), "http://example.net/f", None),
    (line(".example.org", "TRUE", "/", "FALSE", "0", "a", "1"), "http://sub.example.org/f", "a=1"),
    (line(".example.org", "TRUE", "/", "FALSE", "0", "a", "1"), "http://example.org/f", "a=1"),
    (line(".example.org", "TRUE", "/", "FALSE", "0", "a", "1"), "http://badexample.org/f", None),
    (line("example.org", "FALSE", "/", "TRUE", "0", "a", "1"), "http://example.org/f", None),       # secure
    (line("example.org", "FALSE", "/", "TRUE", "0", "a", "1"), "https://example.org/f", "a=1"),
    (line("example.org", "FALSE", "/docs", "FALSE", "0", "a", "1"), "http://example.org/docs/f", "a=1"),
    (line("example.org", "FALSE", "/docs", "FALSE", "0", "a", "1"), "http://example.org/f", None),  # path
    (line("127.0.0.1", "FALSE", "/", "FALSE", "0", "a", "1"), "http://127.0.0.1:8080/f", "a=1"),
    (line("127.0.0.1", "FALSE", "/", "FALSE", "0", "a", "1"), "http://localhost:8080/f", None),
])
def test_each_cookie_goes_to_its_own_origin_only(cookie: str, url: str, expected: str | None) -> None:
    assert sent(cookie, url) == expected


@pytest.mark.parametrize("cookie, url, expected", [
    (line("example.org", "FALSE", "/", "FALSE", "0", "a", "1"), "http://sub.example.org/f", None),
    (line("localhost", "FALSE", "/", "FALSE", "0", "a", "1"), "http://localhost:8080/f", "a=1"),
])
def test_a_host_only_cookie_goes_to_exactly_its_host(cookie: str, url: str, expected: str | None) -> None:
    """Stricter than the standard library's liberal default, which sends the first to the subdomain
    and the second nowhere (it compares with ``localhost.local``)."""
    assert sent(cookie, url) == expected


# -- through the command line ------------------------------------------------------------------

@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ.update(DLMAN_HOME=str(tmp_path / "home"), NO_PROXY="*", DLMAN_CONFIG=os.devnull)
    return environ


def dlman(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", *args], env=env, capture_output=True, text=True,
                          timeout=60, input=input)


NEXT_YEAR = str(int(time.time()) + 365 * 86400)
COOKIES = "\n".join([
    "# Netscape HTTP Cookie File",
    line("127.0.0.1", "FALSE", "/", "FALSE", "0", "mine", "one"),
    "#HttpOnly_" + line("127.0.0.1", "FALSE", "/", "FALSE", NEXT_YEAR, "httponly", "two"),
    line("localhost", "FALSE", "/", "FALSE", "0", "theirs", "three"),
    line("127.0.0.1", "FALSE", "/", "TRUE", "0", "secure", "four"),         # HTTPS only
    line("127.0.0.1", "FALSE", "/elsewhere", "FALSE", "0", "pathy", "five"),  # another path
    line("127.0.0.1", "FALSE", "/", "FALSE", "1000", "expired", "six"),
]) + "\n"


def cookies_seen(resource) -> set[str]:
    return {r.headers.get("cookie") for r in resource.requests}


def test_cookies_from_a_file_go_to_their_own_host_only(server, server2, make_data, tmp_path, env) -> None:
    data = make_data(4 << 20)
    a = server.add("/f", data, etag='"f"', throttle=2 << 20)
    b = server2.add("/f", data, etag='"f"', throttle=2 << 20)
    (tmp_path / "c.txt").write_text(COOKIES)
    other = f"http://localhost:{server2.port}/f"
    result = dlman(env, "add", "-c", "4", "-d", str(tmp_path), "--load-cookies", str(tmp_path / "c.txt"),
                   "-o", "f", server.url("/f"))
    assert result.returncode == 0, result.stderr
    assert cookies_seen(a) == {"mine=one; httponly=two"}
    # The same file from localhost as a mirror: its cookie there, none of 127.0.0.1's.
    a.reset_counters()
    result = dlman(env, "add", "-c", "4", "-d", str(tmp_path), "--load-cookies", str(tmp_path / "c.txt"),
                   "-i", "-", input=f"{server.url('/f')}\t{other}\n  out=g\n")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g").read_bytes() == data
    assert b.requests and cookies_seen(b) == {"theirs=three"}
    assert cookies_seen(a) == {"mine=one; httponly=two"}


def test_no_cookie_follows_a_redirect_to_another_host(server, server2, make_data, tmp_path, env) -> None:
    data = make_data(100_000)
    server.add("/go", redirect_to=f"http://localhost:{server2.port}/f")
    target = server2.add("/f", data)
    (tmp_path / "c.txt").write_text(COOKIES)
    result = dlman(env, "add", "-d", str(tmp_path), "--load-cookies", str(tmp_path / "c.txt"), server.url("/go"))
    assert result.returncode == 0, result.stderr
    assert server.resource("/go").requests[0].headers.get("cookie") == "mine=one; httponly=two"
    assert cookies_seen(target) == {"theirs=three"}


def test_cookies_are_saved_with_those_the_server_set(server, make_data, tmp_path, env) -> None:
    server.add("/f", make_data(50_000), headers={"Set-Cookie": "fresh=yes; Path=/; Max-Age=3600"})
    (tmp_path / "c.txt").write_text(COOKIES)
    saved = tmp_path / "saved.txt"
    result = dlman(env, "add", "--later", "-d", str(tmp_path), "--load-cookies", str(tmp_path / "c.txt"),
                   "--save-cookies", str(saved), server.url("/f"))
    assert result.returncode == 0, result.stderr
    assert not saved.exists()  # saved when the run that downloads the job ends
    listed = json.loads(dlman(env, "list", "--json").stdout)[0]["options"]
    assert listed["load_cookies"] == str(tmp_path / "c.txt") and listed["save_cookies"] == str(saved)
    assert dlman(env, "run").returncode == 0
    text = saved.read_text()
    names = {fields.split("\t")[5] for fields in text.splitlines() if "\t" in fields}
    assert names == {"mine", "httponly", "theirs", "secure", "pathy", "fresh"}  # the expired one is gone
    assert "#HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t" in text
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


@pytest.mark.parametrize("content, message", [
    (None, "cannot read cookie file"),
    ("not a cookie line\n", "c.txt:1: expected 7 TAB-separated fields"),
])
def test_a_bad_cookie_file_is_exit_2_with_nothing_enqueued(tmp_path, env, content, message) -> None:
    if content is not None:
        (tmp_path / "c.txt").write_text(content)
    result = dlman(env, "add", "--later", "--load-cookies", str(tmp_path / "c.txt"), "http://127.0.0.1:9/f")
    assert result.returncode == 2 and message in result.stderr
    assert json.loads(dlman(env, "list", "--json").stdout) == []
    missing_dir = dlman(env, "add", "--later", "--save-cookies", str(tmp_path / "no" / "c.txt"),
                        "http://127.0.0.1:9/f")
    assert missing_dir.returncode == 2 and "no directory" in missing_dir.stderr
