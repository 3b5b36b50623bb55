"""The manifest parser: aria2's input-file format, every bad line reported, nothing escaping."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlman.errors import InvalidInputError
import io
import re

import httpx
from urllib.parse import urlsplit

from dlman import options
from dlman.manifest import Entry, ManifestError, TargetIndex, check_out, iter_manifest, parse_manifest, read_lines

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "m.txt")
    return list(caught.value.problems)


def test_spec_example() -> None:
    text = (
        "https://example.org/a.iso\thttps://mirror.example.net/a.iso\n"
        "  out=ubuntu.iso\n"
        f"  checksum=sha-256={SHA}\n"
        "  header=Authorization: Bearer abc\n"
        "https://example.org/b.tar.gz\n"
        "  dir=archives\n"
        "  connections=4\n"
    )
    a, b = parse_manifest(text, "m.txt")
    assert a == Entry(urls=("https://example.org/a.iso", "https://mirror.example.net/a.iso"), line=1,
                      out="ubuntu.iso", checksum=f"sha256:{SHA}", headers=("Authorization: Bearer abc",))
    assert b == Entry(urls=("https://example.org/b.tar.gz",), line=5, dir="archives", connections=4)


def test_comments_blank_lines_crlf_bom_and_split_alias() -> None:
    text = "\ufeff# a comment\r\n\r\nhttp://h/x\r\n\t# indented comment\r\n\tsplit=2\r\n   \r\n"
    (entry,) = parse_manifest(text)
    assert entry.urls == ("http://h/x",) and entry.connections == 2 and entry.line == 3


def test_headers_repeat_and_checksum_forms() -> None:
    text = f"http://h/x\n header=A: 1\n header=B: 2\n checksum=sha256:{SHA.upper()}\n"
    (entry,) = parse_manifest(text)
    assert entry.headers == ("A: 1", "B: 2") and entry.checksum == f"sha256:{SHA}"


def test_every_problem_is_reported_with_file_and_line() -> None:
    text = (
        "  out=x\n"                      # 1: option before any entry
        "ftp://h/x\n"                    # 2: bad scheme
        "http://h/a\n"
        "  colour=red\n"                 # 4: unknown key
        "  checksum=sha256:abc\n"        # 5: bad checksum
        "  connections=many\n"           # 6: not a number
        "http://h/b\n"
        "  out=../escape\n"              # 8: leaves its directory
        "  connections=65\n"             # 9: out of range
        "http://h/c\n"
        "  out=same\n"
        "http://h/d\n"                   # 12: same destination as line 10
        "  out=./same\n"
        "https:///nohost\n"              # 14: no host
        "http://h/e\n"
        "  just text\n"                  # 16: no '='
    )
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["1", "2", "4", "5", "6", "8", "9", "12", "14", "16"]
    assert all(p.startswith("m.txt:") for p in found)
    assert "unknown option 'colour'" in found[2]
    assert "line 10" in found[7]


def test_same_url_twice_in_same_dir_is_a_duplicate_but_not_in_another_dir() -> None:
    assert "line 1" in problems("http://h/x\nhttp://h/x\n")[0]
    assert len(parse_manifest("http://h/x\nhttp://h/x\n dir=other\n")) == 2


def test_duplicate_option_in_one_entry() -> None:
    assert "twice" in problems("http://h/x\n out=a\n out=b\n")[0]
    assert "twice" in problems("http://h/x\n split=2\n connections=3\n")[0]


def test_header_values_are_masked_in_messages() -> None:
    (message,) = problems("http://h/x\n header=Authorization Bearer secret\n")
    assert "secret" not in message


def test_url_credentials_masked_in_messages() -> None:
    (message,) = problems("ftp://user:hunter2@h/x\n")
    assert "hunter2" not in message


@pytest.mark.parametrize("out", ["/etc/passwd", "..", "a/../../b", "..\\x", "C:\\x", "a/", ".", "", "a\x00b",
                                 "a/..", "\n"])
def test_out_that_leaves_or_is_not_a_file(out: str) -> None:
    with pytest.raises(InvalidInputError):
        check_out(out)


@pytest.mark.parametrize("out,expected", [("a.iso", "a.iso"), ("sub/a.iso", "sub/a.iso"), ("./a", "a"),
                                          ("sub//a", "sub/a"), ("sub/./a", "sub/a")])
def test_out_inside_directory(out: str, expected: str) -> None:
    assert check_out(out) == expected


def test_error_is_an_invalid_input_error() -> None:
    with pytest.raises(InvalidInputError):
        parse_manifest("nonsense\n")


lines = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["http://h/x", "https://h/y\thttp://m/y", " out=a", " out=../b", "\tdir=d", " header=A: b",
                     " connections=3", " split=0", f" checksum=sha-256={SHA}", "# c", "", " bogus"]),
    st.builds(lambda v: " out=" + v, st.text(max_size=20)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=12))
def test_parser_raises_only_manifest_error(parts: list[str]) -> None:
    try:
        entries = parse_manifest("\n".join(parts), "f")
    except ManifestError as error:
        assert error.problems and all(p.startswith("f:") for p in error.problems)
        return
    for entry in entries:
        assert entry.urls


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_names_never_leave_their_directory(out: str) -> None:
    text = "http://h/x\n out=" + out.replace("\n", "").replace("\r", "") + "\n"
    try:
        (entry,) = parse_manifest(text)
    except ManifestError:
        return
    base = posixpath.join("/base", "dir")
    target = posixpath.normpath(posixpath.join(base, entry.out.replace("\\", "/")))
    assert target.startswith(base + "/")


@pytest.mark.parametrize("directory, why", [
    ("/etc", "is absolute"), ("C:\\\\Windows", "is absolute"), ("../up", "leaves its directory"),
    ("a/../../up", "leaves its directory"), ("a\\\\..\\\\..\\\\up", "leaves its directory"), ("", "is empty"),
])
def test_dir_must_stay_inside_the_download_directory(directory: str, why: str) -> None:
    found = problems(f"http://h/a\n  dir={directory}\n")
    assert len(found) == 1 and found[0].startswith("m.txt:2:") and why in found[0], found


def test_dir_is_normalised() -> None:
    (entry,) = parse_manifest("http://h/a\n  dir=a/./b//c\n", "m.txt")
    assert entry.dir == "a/b/c"


# -- streaming ----------------------------------------------------------------------------------------

def test_entries_come_out_as_the_lines_are_read() -> None:
    """Each entry is handed on once the next URL line (or the end) closes it, not after the whole file."""
    read: list[int] = []

    def lines():  # type: ignore[no-untyped-def]
        for number, line in enumerate(["http://h/a", "  out=a", "http://h/b", "http://h/c"], start=1):
            read.append(number)
            yield line

    stream = iter_manifest(lines(), "m.txt")
    assert next(stream) == Entry(urls=("http://h/a",), line=1, out="a") and read == [1, 2, 3]
    assert next(stream).line == 3 and read == [1, 2, 3, 4]
    assert [e.line for e in stream] == [4]


def test_after_a_bad_line_nothing_more_comes_out_but_every_problem_is_reported() -> None:
    lines = ["http://h/a", "http://h/b", "  colour=red", "http://h/c", "http://h/a", "ftp://x"]
    stream = iter_manifest(lines, "m.txt")
    assert next(stream).line == 1  # clean so far
    with pytest.raises(ManifestError) as caught:
        next(stream)  # b is bad: from here on the entries are only checked
    assert [p.split(":")[1] for p in caught.value.problems] == ["3", "5", "6"]
    assert "line 1" in caught.value.problems[1]


def test_target_index_remembers_the_first_line_of_each_target() -> None:
    index = TargetIndex()
    try:
        assert index.first("d\0file\0a", 1) is None and index.first("d\0file\0b", 2) is None
        assert index.first("d\0file\0a", 7) == 1 and index.first("d\0file\0a", 9) == 1
    finally:
        index.close()


def test_duplicates_far_apart_in_a_long_manifest_are_reported_against_the_first() -> None:
    lines = [f"http://h/{i}" for i in range(2000)] + ["http://h/7", "http://h/1999"]
    with pytest.raises(ManifestError) as caught:
        list(iter_manifest(lines, "m.txt"))
    assert caught.value.problems == ("m.txt:2001: writes the same file as the entry on line 8",
                                     "m.txt:2002: writes the same file as the entry on line 2000")


def test_read_lines_splits_at_line_feeds_only_and_names_the_first_bad_byte() -> None:
    assert list(read_lines(io.BytesIO(b"a\r\nb\rc\n\xc3\xa9"), "m")) == ["a\r\n", "b\rc\n", "\u00e9"]
    with pytest.raises(InvalidInputError, match=re.escape("m: not UTF-8 text (invalid start byte at byte 6)")):
        list(read_lines(io.BytesIO(b"abc\nde\xff\n"), "m"))


def test_a_streamed_manifest_reads_like_one_in_memory() -> None:
    text = (f"\ufeffhttp://h/a\thttp://m/a\r\n  out=x\n  checksum=sha-256={SHA}\n\n# c\n"
            "http://h/b\n\tdir=d\n\tsplit=3\n   \nhttp://h/c\n")
    streamed = list(iter_manifest(read_lines(io.BytesIO(text.encode()), "m"), "m"))
    assert streamed == parse_manifest(text, "m") and len(streamed) == 3


# -- the URL check's everyday shape ------------------------------------------------------------------

def _problem_the_long_way(url: str) -> str | None:
    """What check_url says of ``url`` without its one-regex shortcut: urlsplit, then httpx."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "expected http:// or https:// with a host"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not (port is None or 0 < port < 65536):
        return "expected http:// or https:// with a host"
    if any(ch.isspace() for ch in text):
        return "it contains whitespace"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "it contains a control character"
    try:
        httpx.URL(text).host
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        return str(exc)
    return None


url_texts = st.builds(
    lambda margin, scheme, host, port, rest: margin + scheme + host + port + rest + margin,
    st.sampled_from(["", " ", "\t", "\x1f"]),
    st.sampled_from(["http://", "https://", "HTTP://", "hTtPs://", "ftp://", "http:/", "http:", ""]),
    st.one_of(st.text(alphabet="aZ09.-_~%@[]:é \x00", max_size=8),
              st.sampled_from(["127.0.0.1", "999.1.1.1", "1.2.3", "xn--", "XN--abc", "xn--fiqs8s", "a.xn--zz"])),
    st.one_of(st.just(""), st.integers(-1, 99999).map(lambda n: f":{n}"), st.sampled_from([":", ":0x1", ": 1"])),
    st.text(alphabet="/?#a \t\n%é\x01\x7f", max_size=6),
)


@settings(max_examples=2000, deadline=None)
@given(url_texts)
def test_the_url_shortcut_agrees_with_urlsplit(text: str) -> None:
    options._url_problem.cache_clear()
    assert options._url_problem(text) == _problem_the_long_way(text), repr(text)


# -- entries become jobs --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(lines, max_size=12), st.sampled_from([{}, {"connections": 5, "headers": ["B: 2"], "retries": 1}]))
def test_entries_alike_share_one_prepare_and_get_exactly_what_prepare_gives(parts: list[str], extra: dict) -> None:
    from dlman.cli import _entry_job
    from dlman.queue import prepare

    try:
        entries = parse_manifest("\n".join(parts), "f")
    except ManifestError:
        return
    common = {"connections": None, "checksum": None, "headers": [], "overwrite": False, "http2": False,
              "insecure": False, "retries": None, "timeout": None, **extra}
    directory, templates = posixpath.join("/base", "dir"), {}
    for entry in entries * 2:
        options = {**common, "headers": list(common["headers"]) + list(entry.headers)}
        if entry.connections is not None:
            options["connections"] = entry.connections
        if entry.checksum is not None:
            options["checksum"] = entry.checksum
        where = posixpath.join(directory, entry.dir) if entry.dir else directory
        expected = prepare(list(entry.urls), where + "/", output=entry.out, **options)
        assert _entry_job(entry, directory, common, templates) == expected
