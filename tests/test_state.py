"""ResumeState: a lossless round trip, and StateError (never another exception) for anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.remote import Validators
from dlman.state import STATE_VERSION, ResumeState, StateError, source_key


def disjoint_intervals(size: int):
    return st.lists(st.integers(0, size), unique=True, max_size=20).map(sorted).map(
        lambda points: [(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)])


validators = st.builds(Validators, etag=st.none() | st.text(), last_modified=st.none() | st.text(),
                       date_is_strong=st.booleans())


def sized_states():
    return st.integers(0, 2**63).flatmap(lambda size: st.builds(
        ResumeState,
        url=st.text(),
        size=st.just(size),
        missing=disjoint_intervals(size),
        sources=st.dictionaries(st.text(), validators, max_size=3),
        reference=st.none() | st.text(),
    ))


SOURCE = {"etag": '"x"', "last_modified": None, "strong": False}


def payload(**changes):
    raw = {"version": STATE_VERSION, "url": "https://e.org/f", "size": 100,
           "missing": [[10, 20], [50, 100]], "reference": "https://e.org/f",
           "sources": {"https://e.org/f": dict(SOURCE)}}
    raw.update(changes)
    return json.dumps(raw).encode()


def test_valid_state_decodes():
    state = ResumeState.decode(payload())
    assert state == ResumeState("https://e.org/f", 100, [(10, 20), (50, 100)],
                                {"https://e.org/f": Validators('"x"')}, "https://e.org/f")
    assert state.downloaded == 100 - 10 - 50
    assert state.written() == [(0, 10), (20, 50)]


@given(sized_states())
def test_encode_decode_round_trip(state):
    decoded = ResumeState.decode(state.encode())
    assert decoded == state
    assert decoded.downloaded == state.downloaded


def test_encoding_is_compact_json_with_a_version():
    data = ResumeState("u", 10, [(0, 10)]).encode()
    raw = json.loads(data)
    assert raw["version"] == STATE_VERSION == 2
    assert raw["missing"] == [[0, 10]]
    assert b" " not in data


def test_a_version_1_state_is_read_with_its_validator_keyed_by_its_source():
    raw = {"version": 1, "url": "https://***@e.org/f?sig=1", "size": 100, "etag": '"x"',
           "last_modified": "Tue, 01 Oct 2024 10:00:00 GMT", "ranges": True, "missing": [[10, 100]]}
    state = ResumeState.decode(json.dumps(raw).encode())
    assert state.reference == "https://e.org/f"
    # a date of unknown strength never goes into If-Range: the overlap check proves the source instead
    assert state.sources == {"https://e.org/f": Validators('"x"', raw["last_modified"], False)}
    assert state.missing == [(10, 100)]


def test_a_version_1_state_without_ranges_is_refused():
    raw = {"version": 1, "url": "u", "size": 100, "ranges": False, "missing": []}
    with pytest.raises(StateError):
        ResumeState.decode(json.dumps(raw).encode())


@pytest.mark.parametrize("url, key", [
    ("https://e.org/f", "https://e.org/f"),
    ("HTTPS://E.ORG:443/f?X-Amz-Signature=abc&X-Amz-Date=1&X-Amz-Expires=60#frag", "https://e.org:443/f"),
    ("https://e.org/dl.php?id=2&token=x&lang=en", "https://e.org/dl.php?id=2&lang=en"),
    ("https://e.org/dl.php?lang=en&id=2", "https://e.org/dl.php?id=2&lang=en"),
    ("https://acct.blob.core.windows.net/c/f?sv=2020&se=2030&sp=r&sig=abc", "https://acct.blob.core.windows.net/c/f"),
    ("https://user:pw@e.org/dir/f?a=1", "https://e.org/dir/f?a=1"),
    ("http://[::1]:8080/f", "http://[::1]:8080/f"),
    ("http://e.org", "http://e.org/"),
])
def test_a_source_is_its_origin_path_and_query_without_credentials_or_signing(url, key):
    assert source_key(url) == key


@pytest.mark.parametrize("data", [
    b"", b"{", b'{"version": 2, "url": "u"', b"\xff\xfe", b"null", b"[]", b"42", b'"text"',
    b"\xef\xbb\xbf" + payload(),
])
def test_truncated_or_unreadable_data_is_a_state_error(data):
    with pytest.raises(StateError):
        ResumeState.decode(data)


def test_truncated_real_state_is_always_a_state_error():
    data = payload()
    for cut in range(len(data)):
        with pytest.raises(StateError):
            ResumeState.decode(data[:cut])


@pytest.mark.parametrize("changes", [
    {"version": 3}, {"version": 0}, {"version": None}, {"version": "2"},
    {"url": None}, {"url": 5},
    {"size": -1}, {"size": True}, {"size": False}, {"size": 1.5}, {"size": "100"}, {"size": None},
    {"sources": None}, {"sources": []}, {"sources": {"k": None}}, {"sources": {"k": {"etag": 5}}},
    {"sources": {"k": {"last_modified": ["x"]}}}, {"sources": {"k": {"strong": "yes"}}},
    {"reference": 5},
    {"missing": None}, {"missing": "0-10"}, {"missing": {"0": 10}},
    {"missing": [[0, 10], [5, 20]]},          # overlapping
    {"missing": [[50, 60], [10, 20]]},        # out of order
    {"missing": [[0, 10], [10, 20]]},         # touching: not in normal form
    {"missing": [[90, 101]]},                 # past the end
    {"missing": [[-1, 10]]},                  # before the start
    {"missing": [[10, 10]]},                  # empty
    {"missing": [[20, 10]]},                  # reversed
    {"missing": [[0, 10, 20]]}, {"missing": [[0]]}, {"missing": [0, 10]},
    {"missing": [[0.0, 10]]}, {"missing": [["0", 10]]}, {"missing": [[False, True]]},
    {"missing": [(0, 10)], "size": 5},
])
def test_inconsistent_fields_are_a_state_error(changes):
    with pytest.raises(StateError):
        ResumeState.decode(payload(**changes))


def test_missing_keys_are_a_state_error():
    for key in ("version", "url", "size", "sources", "missing"):
        raw = json.loads(payload())
        del raw[key]
        with pytest.raises(StateError):
            ResumeState.decode(json.dumps(raw).encode())


@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_state_error_only(data):
    try:
        ResumeState.decode(data)
    except StateError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 300) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@given(st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, 2, None, "1", 1.5]) | _json,
    "url": st.text(max_size=5) | _json,
    "size": st.integers(-5, 300) | _json,
    "etag": st.none() | st.text(max_size=5) | _json,
    "last_modified": st.none() | _json,
    "ranges": st.booleans() | _json,
    "reference": st.none() | st.text(max_size=5) | _json,
    "sources": st.dictionaries(st.text(max_size=3), st.fixed_dictionaries({}, optional={
        "etag": st.none() | st.text(max_size=3) | _json, "last_modified": st.none() | _json,
        "strong": st.booleans() | _json})) | _json,
    "missing": st.lists(st.lists(st.integers(-5, 305), min_size=2, max_size=2), max_size=4) | _json,
}))
def test_json_shaped_junk_decodes_consistently_or_raises_state_error_only(raw):
    try:
        state = ResumeState.decode(json.dumps(raw).encode())
    except StateError:
        return
    assert isinstance(state.url, str)
    assert isinstance(state.size, int) and not isinstance(state.size, bool) and state.size >= 0
    assert all(isinstance(k, str) and isinstance(v, Validators) for k, v in state.sources.items())
    previous_end = -1
    for start, end in state.missing:
        assert previous_end < start < end <= state.size
        previous_end = end


def test_huge_number_is_a_state_error():
    with pytest.raises(StateError):
        ResumeState.decode(b'{"version":2,"url":"u","size":' + b"9" * 5000 + b"}")


def test_deeply_nested_json_is_a_state_error():
    with pytest.raises(StateError):
        ResumeState.decode(b"[" * 100_000)


@pytest.mark.parametrize("version", [True, 2.0])
def test_version_of_the_wrong_type_is_a_state_error(version):
    with pytest.raises(StateError):
        ResumeState.decode(payload(version=version))
