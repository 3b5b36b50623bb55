"""Mirrors and credentials (dlman.mirrors, pure): which URL each connection asks, and what it may carry."""

from __future__ import annotations

import pytest

from dlman.mirrors import Mirrors, allows_credentials, headers_for, origin

HEADERS = [("Authorization", "Bearer x"), ("Cookie", "a=1"), ("X-Api-Key", "k"), ("X-Trace", "t")]


@pytest.mark.parametrize("url, expected", [
    ("https://Example.org/a", ("https", "example.org", 443)),
    ("http://example.org:8080/a", ("http", "example.org", 8080)),
    ("http://[::1]/a", ("http", "::1", 80)),
    ("https://example.org:bad/a", ("", "https://example.org:bad/a", None)),
])
def test_origin(url, expected):
    assert origin(url) == expected


@pytest.mark.parametrize("url, allowed", [
    ("http://a.example/x", True),
    ("http://a.example:80/other", True),
    ("https://a.example/x", True),            # the HTTPS upgrade of the same host, as httpx allows
    ("https://a.example:8443/x", False),
    ("http://a.example:8080/x", False),
    ("http://b.example/x", False),
    ("http://sub.a.example/x", False),
])
def test_credentials_go_only_to_their_origin(url, allowed):
    first = origin("http://a.example/file")
    assert allows_credentials(url, first) is allowed
    sent = headers_for(url, first, HEADERS)
    assert sent == (HEADERS if allowed else [("X-Trace", "t")])


def test_connections_spread_over_the_live_mirrors_and_a_new_attempt_revives_them():
    mirrors = Mirrors(["http://a/f", "http://b/f", "http://c/f"], [])
    assert [mirrors.pick(i).url for i in range(4)] == ["http://a/f", "http://b/f", "http://c/f", "http://a/f"]
    mirrors.drop(mirrors.all[1], RuntimeError("gone"))
    assert [mirrors.pick(i).url for i in range(3)] == ["http://a/f", "http://c/f", "http://a/f"]
    mirrors.all[0].target = "http://cdn/f?sig=1"
    assert mirrors.all[0].ask == "http://cdn/f?sig=1"
    mirrors.new_attempt()
    assert [m.dead for m in mirrors.all] == [False, False, False] and mirrors.all[0].ask == "http://a/f"
    for mirror in mirrors.all:
        mirrors.drop(mirror, RuntimeError("gone"))
    assert mirrors.pick(0) is None


def test_a_mirror_on_another_origin_gets_no_credentials():
    mirrors = Mirrors(["https://a.example/f", "https://b.example/f"], HEADERS)
    assert mirrors.headers("https://a.example/f") == HEADERS
    assert mirrors.headers("https://b.example/f") == [("X-Trace", "t")]
    assert mirrors.credentials("https://a.example/g") and not mirrors.credentials("https://b.example/f")
