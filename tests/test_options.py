"""Option parsing shared by the API, the CLI and manifests: rates, headers, URLs, connections."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.errors import InvalidInputError
from dlman.options import (
    check_connections,
    check_url,
    check_urls,
    mask_header,
    mask_url,
    normalise_headers,
    parse_header,
    parse_rate,
)


# -- rates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("500", 500),
    ("512K", 512 * 1024),
    ("512k", 512 * 1024),
    ("2M", 2 * 1024**2),
    ("2MB", 2 * 1024**2),
    ("2MiB", 2 * 1024**2),
    ("2m/s", 2 * 1024**2),
    ("1.5G", int(1.5 * 1024**3)),
    ("0.5K", 512),
    (" 100 ", 100),
    ("100B", 100),
    (250, 250),
    (None, None),
])
def test_parse_rate_counts_suffixes_in_1024s(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["junk", "", "K", "1T", "-5", "-5K", "0", "0K", "0.0001", "1,5M",
                                  "1.M", "5 K B x", 0, -1])
def test_parse_rate_rejects_junk_zero_and_negative(text):
    with pytest.raises(InvalidInputError) as info:
        parse_rate(text)
    assert "rate" in str(info.value)


def test_parse_rate_with_an_absurd_number_is_invalid_input_or_a_number():
    try:
        assert parse_rate("9" * 400) > 0
    except InvalidInputError:
        pass


# -- headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("X-Test: 1", ("X-Test", "1")),
    ("Authorization:Bearer abc", ("Authorization", "Bearer abc")),
    ("  Accept :  text/plain  ", ("Accept", "text/plain")),
    ("X-Empty:", ("X-Empty", "")),
    ("X-Url: http://a/b:c", ("X-Url", "http://a/b:c")),
])
def test_parse_header_splits_name_and_value(text, expected):
    assert parse_header(text) == expected


@pytest.mark.parametrize("text", ["NoColon", ": value", "Bad Name: x", "Bad\tName: x", "Näme: x",
                                  "X-Test: a\r\nInjected: 1", "X-Test: a\nb", "(x): y"])
def test_parse_header_rejects_what_httpx_would_send_wrong(text):
    with pytest.raises(InvalidInputError):
        parse_header(text)


@pytest.mark.parametrize("text", ["Authorization Bearer s3cr3t", "Authorization: Bearer s3cr3t\nX: 1",
                                  "Cookie: s3cr3t\r\nX: 1"])
def test_invalid_header_message_does_not_show_the_secret(text):
    with pytest.raises(InvalidInputError) as info:
        parse_header(text)
    assert "s3cr3t" not in str(info.value)


def test_normalise_headers_accepts_mapping_pairs_and_strings():
    expected = [("X-A", "1"), ("X-B", "2")]
    assert normalise_headers({"X-A": "1", "X-B": "2"}) == expected
    assert normalise_headers([("X-A", "1"), ("X-B", "2")]) == expected
    assert normalise_headers(["X-A: 1", "X-B: 2"]) == expected
    assert normalise_headers(["X-A: 1", ("X-B", "2")]) == expected
    assert normalise_headers(None) == [] and normalise_headers([]) == [] and normalise_headers({}) == []


def test_normalise_headers_keeps_repeated_names():
    assert normalise_headers(["Cookie: a=1", "Cookie: b=2"]) == [("Cookie", "a=1"), ("Cookie", "b=2")]


def test_normalise_headers_rejects_bad_entries():
    with pytest.raises(InvalidInputError):
        normalise_headers({"Bad Name": "x"})
    with pytest.raises(InvalidInputError):
        normalise_headers([("X", "a\nb")])


@pytest.mark.parametrize("text", [
    "Authorization: Bearer s3cr3t", "authorization: Basic s3cr3t", "Proxy-Authorization: s3cr3t",
    "Cookie: session=s3cr3t", "X-Api-Key: s3cr3t", "Api-Key: s3cr3t", "X-Auth-Token: s3cr3t",
    "Private-Token: s3cr3t", "X-Client-Secret: s3cr3t",
])
def test_mask_header_hides_credential_values(text):
    masked = mask_header(text)
    name, value = text.split(":", 1)
    assert masked == f"{name.strip()}: ***"
    assert "s3cr3t" not in masked


def test_mask_header_leaves_ordinary_headers_and_masks_unparseable_ones():
    assert mask_header("Accept: text/plain") == "Accept: text/plain"
    assert mask_header("no colon here") == "***"


@pytest.mark.parametrize("url, expected", [
    ("https://user:pass@example.org/f?x=1", "https://***@example.org/f?x=1"),
    ("https://token@example.org:8443/f", "https://***@example.org:8443/f"),
    ("https://a:b@c@example.org/f", "https://***@example.org/f"),
    ("https://example.org/a@b", "https://example.org/a@b"),
    ("https://example.org/f", "https://example.org/f"),
])
def test_mask_url_hides_userinfo(url, expected):
    assert mask_url(url) == expected


@given(user=st.text(alphabet="abcdefXYZ019._~-", min_size=1), password=st.text(alphabet="abcXYZ019!$", min_size=4))
def test_mask_url_never_shows_the_password(user, password):
    masked = mask_url(f"https://{user}:{password}@example.org/file")
    assert password not in masked and masked.endswith("@example.org/file")


# -- URLs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("http://example.org/f", "http://example.org/f"),
    ("https://example.org", "https://example.org"),
    ("HTTPS://EXAMPLE.ORG/x", "HTTPS://EXAMPLE.ORG/x"),
    ("  https://example.org/f  ", "https://example.org/f"),
    ("https://u:p@example.org:8443/f?q=1#x", "https://u:p@example.org:8443/f?q=1#x"),
    ("http://[::1]:8080/f", "http://[::1]:8080/f"),
    ("http://127.0.0.1/f", "http://127.0.0.1/f"),
])
def test_check_url_accepts_absolute_http_urls(url, expected):
    assert check_url(url) == expected


@pytest.mark.parametrize("url", [
    "ftp://example.org/f", "file:///etc/passwd", "example.org/f", "/local/path", "", "http://",
    "https:///path", "http://:80/", "http://exa mple.org/f", "http://example.org/a b",
    "http://example.org/\tx", "http://example.org:99999/", "http://example.org:0/",
    "http://example.org:port/", "javascript:alert(1)",
])
def test_check_url_rejects_other_schemes_missing_hosts_and_whitespace(url):
    with pytest.raises(InvalidInputError) as info:
        check_url(url)
    assert "invalid URL" in str(info.value)


def test_check_url_error_masks_credentials():
    with pytest.raises(InvalidInputError) as info:
        check_url("ftp://user:s3cr3t@example.org/f")
    assert "s3cr3t" not in str(info.value)


def test_check_urls_takes_one_or_several_and_refuses_none():
    assert check_urls("https://a.org/f") == ["https://a.org/f"]
    assert check_urls(["https://a.org/f", "https://b.org/f"]) == ["https://a.org/f", "https://b.org/f"]
    with pytest.raises(InvalidInputError):
        check_urls([])
    with pytest.raises(InvalidInputError):
        check_urls(["https://a.org/f", "ftp://b.org/f"])


@pytest.mark.parametrize("url", ["http://[::1/", "https://example.org]/f"])
def test_check_url_with_unbalanced_brackets_is_invalid_input(url):
    with pytest.raises(InvalidInputError):
        check_url(url)


def test_mask_url_never_raises():
    assert "s3cr3t" not in mask_url("http://u:s3cr3t@[::1/")


# brackets are left out here: they reach the bug documented just above
@given(st.text(alphabet=st.characters(blacklist_characters="[]")))
def test_check_url_returns_a_url_or_raises_invalid_input_only(text):
    try:
        url = check_url(text)
    except InvalidInputError:
        return
    assert url.lower().startswith(("http://", "https://"))
    assert not any(ch.isspace() for ch in url)


# -- connections -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 8, 64])
def test_check_connections_accepts_1_to_64(value):
    assert check_connections(value) == value


@pytest.mark.parametrize("value", [0, -1, 65, 1000, "8", 8.0, None])
def test_check_connections_rejects_out_of_range_and_non_integers(value):
    with pytest.raises(InvalidInputError) as info:
        check_connections(value)
    assert "between 1 and 64" in str(info.value)
