"""Checking a source against bytes already on disk (pure: which bytes to compare).

A validator (strong ETag, or a Last-Modified a second older than the answer)
proves that a source still serves the version on disk. Without one, the proof
is the bytes themselves: a request starts a little before the resume point and
the overlap is compared with the disk (SPEC rule 5), and a source not heard from
before (another mirror, or wherever a redirector now points) must first serve
an already written stretch identically before any of its bytes is written.
"""

from __future__ import annotations

OVERLAP_BYTES = 16 << 10   # re-fetched and compared before a resume point
PROBE_BYTES = 16 << 10     # compared to accept a new source


def overlap_before(pos: int, written: list[tuple[int, int]], limit: int = OVERLAP_BYTES) -> int:
    """How many bytes right before ``pos`` are on disk (at most ``limit``): the overlap to re-fetch."""
    for start, end in written:
        if start < pos <= end:
            return min(limit, pos - start)
    return 0


def probe_spans(written: list[tuple[int, int]], limit: int = PROBE_BYTES) -> list[tuple[int, int]]:
    """Written stretches to compare a new source against, best first: the end of each stretch
    (its latest bytes), longest stretch first, then the start of each."""
    ordered = sorted(written, key=lambda r: (-(r[1] - r[0]), r[0]))
    ends = [(max(start, end - limit), end) for start, end in ordered]
    starts = [(start, min(end, start + limit)) for start, end in ordered]
    return ends + [span for span in starts if span not in ends]


def candidate_range(span: tuple[int, int]) -> tuple[int, int]:
    """(offset, length) of a span, as a positioned read takes it."""
    return span[0], span[1] - span[0]


def informative(data: bytes) -> bool:
    """Whether bytes can tell two files apart: not one value repeated (zeros, 0xFF padding)."""
    return len(data) > 0 and data.count(data[:1]) != len(data)
