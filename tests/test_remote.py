"""What an answer means (dlman.remote): every decision about a response, table by table, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.remote import (
    Action,
    RangeAsk,
    RemoteFile,
    Validators,
    judge_first,
    judge_range,
    read_answer,
    read_validators,
    reason_from_body,
)

DATE = "Tue, 01 Oct 2024 10:00:00 GMT"
LATER = "Tue, 01 Oct 2024 10:00:05 GMT"
SAME_SECOND = "Tue, 01 Oct 2024 10:00:00 GMT"
FILE = RemoteFile(1000, True, Validators('"v1"', DATE, True), None)


def answer(status: int, **headers: str):
    return read_answer(status, {k.replace("_", "-"): v for k, v in headers.items()})


# -- validators -----------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, expected", [
    ({"etag": '"a"'}, Validators('"a"')),
    ({"etag": 'W/"a"'}, Validators()),                                   # weak: never in If-Range
    ({"etag": "a"}, Validators()),                                       # unquoted: not an entity tag
    ({"last-modified": DATE, "date": LATER}, Validators(None, DATE, True)),
    ({"last-modified": DATE, "date": SAME_SECOND}, Validators(None, DATE, False)),  # Apache's fresh file
    ({"last-modified": DATE}, Validators(None, DATE, False)),            # no Date: not provably strong
    ({"last-modified": "yesterday", "date": LATER}, Validators()),       # junk
])
def test_read_validators(headers, expected):
    assert read_validators(headers) == expected


@pytest.mark.parametrize("validators, if_range", [
    (Validators('"a"', DATE, True), '"a"'),
    (Validators(None, DATE, True), DATE),
    (Validators(None, DATE, False), None),
    (Validators(), None),
])
def test_if_range_prefers_the_etag_and_never_sends_a_weak_date(validators, if_range):
    assert validators.if_range() == if_range


@pytest.mark.parametrize("one, other, contradicts", [
    (Validators('"a"'), Validators('"b"'), True),
    (Validators('"a"', DATE), Validators('"a"', LATER), False),          # equal ETags decide
    (Validators(None, DATE), Validators(None, LATER), True),
    (Validators(None, DATE), Validators(None, "Tue, 01 Oct 2024 10:00:00 +0000"), False),  # same instant
    (Validators('"a"'), Validators(None, DATE), False),                  # nothing to compare
    (Validators(), Validators('"a"'), False),
])
def test_contradicts_only_on_evidence(one, other, contradicts):
    assert one.contradicts(other) is contradicts
    assert other.contradicts(one) is contradicts


# -- the first answer -----------------------------------------------------------------------------
@pytest.mark.parametrize("status, headers, ranged, action, size, ranges", [
    (206, {"content_range": "bytes 0-999/1000", "content_length": "1000"}, True, Action.ACCEPT, 1000, True),
    (206, {"content_range": "bytes 0-99/1000", "content_length": "100"}, True, Action.ACCEPT, 1000, True),
    (206, {"content_range": "bytes 5-99/1000"}, True, Action.FALLBACK, None, None),
    (206, {"content_range": "bytes 0-99/*"}, True, Action.FALLBACK, None, None),
    (206, {"content_range": "junk"}, True, Action.FALLBACK, None, None),
    (206, {"content_range": "bytes 0-99/1000", "content_length": "200"}, True, Action.FALLBACK, None, None),
    (206, {"content_range": "junk"}, False, Action.FATAL, None, None),
    (200, {"content_length": "1000"}, True, Action.ACCEPT, 1000, False),
    (200, {"content_length": "1000", "transfer_encoding": "chunked"}, True, Action.ACCEPT, None, False),
    (200, {}, True, Action.ACCEPT, None, False),
    (416, {"content_range": "bytes */0"}, True, Action.REFUSED, None, None),
    (503, {"retry_after": "7"}, True, Action.RETRY, None, None),
    (404, {}, True, Action.GONE, None, None),
    (403, {}, True, Action.GONE, None, None),
    (400, {}, True, Action.FATAL, None, None),
    (304, {}, True, Action.FATAL, None, None),
])
def test_judge_first(status, headers, ranged, action, size, ranges):
    verdict, remote = judge_first(answer(status, **headers), ranged=ranged)
    assert verdict.action is action
    if action is Action.ACCEPT:
        assert remote is not None and (remote.size, remote.ranges) == (size, ranges)
    else:
        assert remote is None


def test_judge_first_keeps_the_servers_wishes():
    verdict, _ = judge_first(answer(503, retry_after="7"), ranged=True)
    assert verdict.after == 7.0
    verdict, _ = judge_first(answer(416, content_range="bytes */55"), ranged=True)
    assert verdict.total == 55


# -- every later answer ---------------------------------------------------------------------------
ASK = RangeAsk(100, 500, '"v1"')


@pytest.mark.parametrize("status, headers, ask, action", [
    (206, {"content_range": "bytes 100-499/1000", "content_length": "400", "etag": '"v1"'}, ASK, Action.ACCEPT),
    (206, {"content_range": "bytes 100-199/1000", "etag": '"v1"'}, ASK, Action.ACCEPT),  # shorter: the rest later
    (206, {"content_range": "bytes 100-499/1000"}, ASK, Action.UNCONFIRMED),             # no validator: proves nothing
    (206, {"content_range": "bytes 100-499/1000", "last_modified": DATE}, RangeAsk(100, 500, DATE), Action.ACCEPT),
    (206, {"content_range": "bytes 100-499/1000", "etag": '"v2"'}, ASK, Action.CHANGED),  # If-Range ignored
    (206, {"content_range": "bytes 100-499/2000"}, ASK, Action.CHANGED),                 # another size
    (206, {"content_range": "bytes 101-499/1000"}, ASK, Action.FALLBACK),                # wrong start
    (206, {"content_range": "bytes 100-499/1000", "content_length": "500"}, ASK, Action.FALLBACK),  # overlong
    (206, {"content_range": "bytes 100-499/1000", "content_encoding": "gzip"}, ASK, Action.FALLBACK),
    (206, {}, ASK, Action.FALLBACK),
    (206, {"content_range": "bytes 84-99/1000"}, RangeAsk(84, 500, None, 100), Action.FALLBACK),  # only overlap
    (200, {"etag": '"v2"'}, ASK, Action.CHANGED),                                        # If-Range said no
    (200, {"etag": '"v1"'}, ASK, Action.UNCONFIRMED),                                    # ...about itself
    (200, {}, RangeAsk(100, 500), Action.FALLBACK),                                      # ranges ignored
    (200, {"etag": '"v9"'}, RangeAsk(100, 500), Action.CHANGED),                         # and another version
    (416, {"content_range": "bytes */1000"}, ASK, Action.REFUSED),
    (429, {}, ASK, Action.RETRY),
    (410, {}, ASK, Action.GONE),
    (401, {}, ASK, Action.GONE),
    (418, {}, ASK, Action.FATAL),
])
def test_judge_range(status, headers, ask, action):
    verdict = judge_range(answer(status, **headers), ask, FILE, FILE.validators)
    assert verdict.action is action, verdict


def test_an_accepted_range_never_reaches_past_its_content_range_or_the_ask():
    verdict = judge_range(answer(206, content_range="bytes 100-199/1000", etag='"v1"'), ASK, FILE, None)
    assert (verdict.start, verdict.end) == (100, 200)
    verdict = judge_range(answer(206, content_range="bytes 100-999/1000"), RangeAsk(100, 500), FILE, None)
    assert (verdict.start, verdict.end) == (100, 500)


def test_a_source_not_heard_from_has_no_validators_to_contradict():
    verdict = judge_range(answer(206, content_range="bytes 100-499/1000", etag='"mirror"'), RangeAsk(100, 500),
                          FILE, None)
    assert verdict.action is Action.ACCEPT


@given(st.integers(100, 599), st.dictionaries(
    st.sampled_from(["content-range", "content-length", "etag", "last-modified", "date", "retry-after",
                     "content-encoding", "transfer-encoding"]), st.text(max_size=40)))
def test_judging_never_raises_on_hostile_headers(status, headers):
    parsed = read_answer(status, headers)
    judge_first(parsed, ranged=True)
    judge_range(parsed, ASK, FILE, FILE.validators)


# -- the server's own words -------------------------------------------------------------------------
@pytest.mark.parametrize("content_type, body, reason", [
    ("application/xml", b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
     "Request has expired"),
    ("application/json", b'{"error": {"message": "token expired"}}', "token expired"),
    ("application/json", b'{"error_description": "bad client"}', "bad client"),
    ("text/plain; charset=utf-8", b"\n  quota exceeded for today\nmore", "quota exceeded for today"),
    ("text/html", b"<html><title>Access &amp; denied</title></html>", "Access & denied"),
    ("text/plain", b"404 Not Found\n", None),                      # only the status line again
    ("application/octet-stream", b"\x00\x01", None),
    ("application/json", b"{not json", None),
    ("text/plain", b"a\x1b[31mred\x07", "a [31mred"),               # no escape character reaches a terminal
])
def test_reason_from_body(content_type, body, reason):
    assert reason_from_body(content_type, body, 404, "Not Found") == reason
