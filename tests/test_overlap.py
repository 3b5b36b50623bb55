"""Which bytes on disk prove a source (dlman.overlap, pure)."""

from __future__ import annotations

import pytest

from dlman.overlap import OVERLAP_BYTES, PROBE_BYTES, candidate_range, informative, overlap_before, probe_spans


@pytest.mark.parametrize("pos, written, expected", [
    (0, [], 0),
    (100, [(0, 100)], 100),                          # all of a short run before the position
    (100_000, [(0, 100_000)], OVERLAP_BYTES),        # at most OVERLAP_BYTES
    (100, [(0, 50), (60, 100)], 40),                 # only the contiguous run ending at the position
    (100, [(0, 99)], 0),                             # nothing right before it
    (100, [(100, 200)], 0),
])
def test_overlap_before(pos, written, expected):
    assert overlap_before(pos, written) == expected


@pytest.mark.parametrize("written, expected", [
    ([], []),
    ([(0, 1000)], [(0, 1000)]),
    ([(0, 10), (50, 50 + 10 * PROBE_BYTES)],                    # the longest stretch first, its end first
     [(50 + 9 * PROBE_BYTES, 50 + 10 * PROBE_BYTES), (0, 10), (50, 50 + PROBE_BYTES)]),
    ([(0, 100), (200, 300)], [(0, 100), (200, 300)]),           # a tie goes to the first
])
def test_probe_spans(written, expected):
    assert probe_spans(written) == expected


@pytest.mark.parametrize("data, informative_", [
    (b"", False), (bytes(100), False), (b"\xff" * 100, False), (b"\x00" * 99 + b"\x01", True), (b"ab", True),
])
def test_only_bytes_that_vary_can_tell_two_files_apart(data, informative_):
    assert informative(data) is informative_
    assert candidate_range((10, 25)) == (10, 15)
