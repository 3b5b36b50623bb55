"""Proof under failure: fuzzing every parser of untrusted input and the segment planner.

Each property runs twice: at hypothesis' default example count in the quick run, and at
2000 examples under ``-m slow``. The strategies aim near the valid forms (almost-right headers,
mutated state files, hostile names), where the unit tests' ``st.text()`` rarely lands.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlman.checksum import ALGORITHMS, parse_checksum
from dlman.errors import InvalidInputError
from dlman.httpheaders import parse_content_disposition, parse_content_range, parse_retry_after
from dlman.naming import choose_name, contained, sanitise_name
from dlman.segments import SegmentPlan
from dlman.remote import Validators
from dlman.state import ResumeState, StateError

BIG = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))


def both(*strategies, **kw_strategies):
    """Decorate a property into (quick test at default counts, slow test at 2000 examples)."""
    def make(fn):
        def copy():  # a distinct function object per test: settings are stored on the function
            @functools.wraps(fn)
            def run(*args, **kwargs):
                return fn(*args, **kwargs)
            return run
        quick = settings(deadline=None)(given(*strategies, **kw_strategies)(copy()))
        slow = pytest.mark.slow(BIG(given(*strategies, **kw_strategies)(copy())))
        return quick, slow
    return make


# -- Content-Range ---------------------------------------------------------------------------

numbers = st.one_of(st.integers(0, 10**6).map(str), st.integers(0, 10**40).map(str),
                    st.sampled_from(["", "-1", "1e3", "0x10", "٣", "１", " 7", "*"]))
near_content_range = st.builds(
    lambda unit, sp1, a, dash, b, slash, total: f"{unit}{sp1}{a}{dash}{b}{slash}{total}",
    st.sampled_from(["bytes", "BYTES", "bytes=", "items", "", "bytes "]),
    st.sampled_from([" ", "  ", "", "\t"]), numbers, st.sampled_from(["-", "--", "", "–"]),
    numbers, st.sampled_from(["/", " / ", "", "//"]), numbers,
) | st.text(max_size=60)


def content_range_property(value):
    parsed = parse_content_range(value)
    if parsed is None:
        return
    if parsed.start is None:
        assert parsed.end is None and parsed.length == 0
    else:
        assert 0 <= parsed.start <= parsed.end
        assert parsed.length == parsed.end - parsed.start + 1
        if parsed.total is not None:
            assert parsed.end < parsed.total


test_content_range_is_consistent_or_none, test_content_range_is_consistent_or_none_2000 = \
    both(near_content_range)(content_range_property)


# -- Content-Disposition and names -------------------------------------------------------------

hostile_names = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["..", ".", "/", "\\", "a", "etc", "passwd", "\x00", "\n", "%2F", "%00",
                              "C:", "~", " ", "é", "\u202e", "\x85", "\ufeff"]), max_size=12).map("".join),
    st.integers(200, 1200).map(lambda n: "n" * n + ".txt"),
)
disposition_values = st.one_of(
    st.builds(lambda kind, name: f'{kind}; filename="{name}"',
              st.sampled_from(["attachment", "inline", "", "ATTACHMENT"]), hostile_names),
    st.builds(lambda charset, lang, name: f"attachment; filename*={charset}'{lang}'{name}",
              st.sampled_from(["UTF-8", "utf-8", "iso-8859-1", "", "bogus", "utf-16"]),
              st.sampled_from(["", "en", "'"]), hostile_names.map(lambda n: "".join(
                  c if c.isalnum() else "%" + "%".join(f"{b:02X}" for b in c.encode()) for c in n))),
    st.text(max_size=80),
)


def disposition_property(value, url_name):
    name = parse_content_disposition(value)
    assert name is None or isinstance(name, str)
    chosen = choose_name("https://example.org/" + url_name, value)
    base = Path("/srv/downloads/dir")
    target = contained(base, chosen)
    assert target.parent == base
    assert chosen not in ("", ".", "..") and "/" not in chosen and "\x00" not in chosen
    assert len(chosen.encode("utf-8")) <= 240


test_content_disposition_gives_a_contained_name, test_content_disposition_gives_a_contained_name_2000 = \
    both(disposition_values, st.text(max_size=20).map(lambda t: t.replace("?", "").replace("#", "")))(
        disposition_property)


def sanitised_property(raw):
    name = sanitise_name(raw)
    if name is None:
        return
    base = Path("/srv/downloads/dir")
    target = Path(os.path.normpath(base / name))
    assert target.parent == base
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    assert not name.startswith(".") and name not in (".", "..")


def test_sanitise_name_is_idempotent():
    once = sanitise_name("0. .")
    assert sanitise_name(once) == once


test_sanitised_names_never_leave_their_directory, test_sanitised_names_never_leave_their_directory_2000 = \
    both(hostile_names)(sanitised_property)


# -- Retry-After ---------------------------------------------------------------------------------

retry_after_values = st.one_of(
    st.integers(0, 10**30).map(str),
    st.builds(lambda day, d, mon, y, h, m, s, zone: f"{day}, {d:02d} {mon} {y} {h:02d}:{m:02d}:{s:02d} {zone}",
              st.sampled_from(["Mon", "Sun", "Xyz", ""]), st.integers(0, 40),
              st.sampled_from(["Jan", "Feb", "Dec", "Foo"]), st.integers(0, 99999),
              st.integers(0, 30), st.integers(0, 70), st.integers(0, 70),
              st.sampled_from(["GMT", "UTC", "+0200", "-9999", "", "PST"])),
    st.text(max_size=40),
)


def retry_after_property(value):
    seconds = parse_retry_after(value)
    assert seconds is None or (isinstance(seconds, float) and seconds >= 0)


test_retry_after_is_seconds_or_none, test_retry_after_is_seconds_or_none_2000 = \
    both(retry_after_values)(retry_after_property)


# -- checksum strings ------------------------------------------------------------------------------

checksum_values = st.one_of(
    st.builds(lambda algo, sep, hexa, pad: f"{pad}{algo}{sep}{hexa}{pad}",
              st.sampled_from(sorted(ALGORITHMS) + ["SHA-256", "sha-512", "sha3_256", "md4", "", "sha"]),
              st.sampled_from([":", "=", " : ", "::", "", "-"]),
              st.text(alphabet="0123456789abcdefABCDEFg", max_size=140), st.sampled_from(["", " ", "\n"])),
    st.text(max_size=80),
)


def checksum_property(text):
    try:
        parsed = parse_checksum(text)
    except InvalidInputError as exc:
        assert str(exc)
        return
    assert parsed.algorithm in ALGORITHMS
    assert len(parsed.hexdigest) == ALGORITHMS[parsed.algorithm]
    assert parsed.hexdigest == parsed.hexdigest.lower()
    assert parse_checksum(str(parsed)) == parsed


test_checksum_parses_or_raises_invalid_input_only, test_checksum_parses_or_raises_invalid_input_only_2000 = \
    both(checksum_values)(checksum_property)


# -- the state loader ------------------------------------------------------------------------------

def valid_state_bytes(size: int, cuts: list[int]) -> bytes:
    points = sorted({c % (size + 1) for c in cuts})
    missing = [[a, b] for a, b in zip(points[::2], points[1::2]) if a < b]
    return ResumeState("https://example.org/f", size, [tuple(m) for m in missing],
                       {"https://example.org/f": Validators('"e"')}, "https://example.org/f").encode()


mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]),
                               st.integers(0, 10**6), st.integers(0, 255)), max_size=4)


def state_property(size, cuts, edits, junk):
    data = bytearray(valid_state_bytes(size, cuts) if junk is None else junk)
    for kind, where, value in edits:
        at = where % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= value or 1
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value])
        elif kind == "delete" and data:
            del data[at % len(data)]
    try:
        state = ResumeState.decode(bytes(data))
    except StateError:
        return
    assert isinstance(state.size, int) and state.size >= 0
    previous = -1
    for start, end in state.missing:
        assert previous < start < end <= state.size
        previous = end
    assert 0 <= state.downloaded <= state.size
    assert ResumeState.decode(state.encode()) == state


test_state_loader_raises_only_state_error, test_state_loader_raises_only_state_error_2000 = both(
    st.integers(0, 10**12), st.lists(st.integers(0, 10**12), max_size=8), mutations,
    st.none() | st.binary(max_size=200) | st.sampled_from([b"[" * 5000, b"{" * 5000,
                                                           b'{"version":1,"size":' + b"9" * 5000 + b"}"]),
)(state_property)


# -- the segment planner -------------------------------------------------------------------------

operations = st.lists(st.tuples(st.sampled_from(["take", "take", "receive", "write", "release", "fail"]),
                                st.integers(0, 10**6), st.integers(0, 5000)), max_size=80)


def planner_property(size, min_segment, parts, preset, ops):
    """Connections take work, receive, write, finish or fail in any order; then the plan is
    driven to completion. No byte is ever written twice and, in the end, every byte once."""
    missing = None
    if preset:
        points = sorted({p % (size + 1) for p in preset})
        missing = [(a, b) for a, b in zip(points[::2], points[1::2]) if a < b]
    plan = SegmentPlan(size, missing, min_segment=min_segment)
    written = bytearray(size)
    if missing is not None:
        written[:] = b"\x01" * size
        for a, b in missing:
            written[a:b] = bytes(b - a)
    plan.split_evenly(parts)
    held = []

    def write(segment):
        chunk = written[segment.pos:segment.received]
        assert not any(chunk), "a byte was written twice"
        written[segment.pos:segment.received] = b"\x01" * (segment.received - segment.pos)
        segment.pos = segment.received

    def check():
        for s in plan.segments:
            assert s.start <= s.pos <= s.received <= s.end
        for a, b in zip(plan.segments, plan.segments[1:]):
            assert a.end <= b.start, "segments overlap"
        gaps = bytearray(b"\x01" * size)
        for a, b in plan.missing():
            assert not any(written[a:b]), "a written byte is reported missing"
            gaps[a:b] = bytes(b - a)
        assert gaps == written, "a missing byte is reported written"

    for kind, index, amount in ops:
        if kind == "take":
            segment = plan.next_work()
            if segment is not None:
                assert segment.busy and segment not in held
                held.append(segment)
        elif held:
            segment = held[index % len(held)]
            if kind == "receive":
                segment.received = min(segment.end, max(segment.received, segment.pos) + amount)
            elif kind == "write":
                write(segment)
            else:  # release after finishing what was written, or fail losing what was in memory
                if kind == "release":
                    write(segment)
                segment.received = segment.pos
                held.remove(segment)
                plan.release(segment)
        check()
    for segment in held:
        segment.received = segment.pos
        plan.release(segment)
    for _ in range(10 * size + 10):
        segment = plan.next_work()
        if segment is None:
            break
        segment.received = segment.end
        write(segment)
        plan.release(segment)
        check()
    assert plan.complete and plan.next_work() is None
    assert all(written), "a byte was never written"


test_planner_never_overlaps_and_covers_everything, test_planner_never_overlaps_and_covers_everything_2000 = \
    both(st.integers(0, 4000), st.integers(1, 600), st.integers(1, 16),
         st.none() | st.lists(st.integers(0, 4000), max_size=8), operations)(planner_property)


def test_fuzz_module_sanity():
    """The generated state strategy produces decodable states (else the mutations prove little)."""
    raw = valid_state_bytes(1000, [10, 20, 500, 900])
    assert ResumeState.decode(raw).missing == [(10, 20), (500, 900)]
    assert json.loads(raw)["version"] == 2
