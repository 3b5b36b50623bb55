"""Segment planning: which byte ranges each connection fetches (pure, no I/O).

The plan is a list of segments covering the missing bytes. A segment's ``end``
may shrink while a connection works on it: when another connection runs out of
work it takes over the far half of the largest remaining segment (SPEC rule 4),
so one slow connection never holds up the end of a download.

Two sizes bound the splitting: up-front pieces are at least ``min_segment``
(a new request costs a round trip, so small files stay on one connection); a
takeover may cut down to a quarter of that, because near the end a request's
cost is small next to waiting for a slow connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_MIN_SEGMENT = 1 << 20


@dataclass(eq=False)
class Segment:
    """Bytes ``[start, end)`` of the file, of which ``[start, pos)`` are written to disk.

    ``received`` runs ahead of ``pos`` by what a connection holds in memory or is
    writing; a split never cuts below it, so no byte is fetched twice.
    ``reach`` is where the body now feeding it ends (None when no body is): a
    takeover that fails before its first byte is given back to the segment it
    was cut from when that segment's body still covers it.
    """

    start: int
    end: int
    pos: int
    busy: bool = False
    received: int = -1
    reach: int | None = None

    def __post_init__(self) -> None:
        self.received = max(self.received, self.pos)

    @property
    def remaining(self) -> int:
        return max(0, self.end - max(self.pos, self.received))

    @property
    def done(self) -> bool:
        return self.pos >= self.end


class SegmentPlan:
    """The missing bytes of a file of known ``size``, as segments handed out to connections."""

    def __init__(self, size: int, missing: Iterable[tuple[int, int]] | None = None,
                 *, min_segment: int = DEFAULT_MIN_SEGMENT) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self.min_segment = max(1, min_segment)
        intervals = [(0, size)] if missing is None else list(missing)
        self.segments: list[Segment] = [Segment(a, b, a) for a, b in normalise(intervals, size)]

    def split_evenly(self, parts: int) -> None:
        """Cut idle segments so that up to ``parts`` connections can start at once.

        Each piece stays at least ``min_segment`` long; a busy segment keeps its
        connection and is cut like the others (its connection stops at the new end).
        """
        while len(self.unfinished()) < parts:
            if self.split_largest(self.min_segment) is None:
                break

    def unfinished(self) -> list[Segment]:
        return [s for s in self.segments if not s.done]

    def next_work(self) -> Segment | None:
        """Work for a connection that has none: an idle segment, else half of the largest busy one."""
        for segment in self.segments:
            if not segment.busy and not segment.done:
                segment.busy = True
                return segment
        taken = self.split_largest(self.min_takeover)
        if taken is not None:
            taken.busy = True
        return taken

    def useful_connections(self, limit: int) -> int:
        """How many of ``limit`` connections can ever have work: one per unfinished segment, and
        no more than pieces of ``min_takeover`` fit in the file (a takeover cuts none smaller).
        A small file gets one connection instead of many that would only start and stop."""
        return max(1, min(limit, max(len(self.unfinished()), self.size // self.min_takeover)))

    @property
    def min_takeover(self) -> int:
        return max(1, self.min_segment // 4)

    def split_largest(self, minimum: int | None = None) -> Segment | None:
        """Split the segment with the most bytes left, if both halves keep ``minimum`` bytes."""
        minimum = self.min_segment if minimum is None else minimum
        candidates = self.unfinished()
        if not candidates:
            return None
        return self.split(max(candidates, key=lambda s: s.remaining), minimum)

    def split(self, segment: Segment, minimum: int | None = None) -> Segment | None:
        """Cut off the far half of ``segment`` as a new idle segment, if both halves keep ``minimum``."""
        minimum = self.min_segment if minimum is None else minimum
        if segment.remaining < 2 * minimum:
            return None
        middle = max(segment.pos, segment.received) + segment.remaining // 2
        tail = Segment(middle, segment.end, middle)
        segment.end = middle
        self.segments.insert(self.segments.index(segment) + 1, tail)
        return tail

    def give_back(self, segment: Segment) -> None:
        """A connection gives up on ``segment``: the segment before it absorbs it when its body
        still covers it (a takeover refused while the cut connection streams on), else it
        waits, idle, for another connection."""
        segment.busy = False
        index = self.segments.index(segment)
        before = self.segments[index - 1] if index > 0 else None
        if (before is not None and before.busy and before.end == segment.start == segment.pos
                and before.reach is not None and before.reach >= segment.end):
            before.end = segment.end
            del self.segments[index]

    def release(self, segment: Segment) -> None:
        """A connection stopped working on ``segment`` (finished, failed or cancelled)."""
        segment.busy = False
        if segment.done:
            self.segments = [s for s in self.segments if not s.done or s.busy]

    def missing(self) -> list[tuple[int, int]]:
        """The byte ranges not yet on disk, merged and sorted."""
        return normalise(((s.pos, s.end) for s in self.segments), self.size)

    def written(self) -> list[tuple[int, int]]:
        """The byte ranges on disk, merged and sorted."""
        return complement(self.missing(), self.size)

    @property
    def downloaded(self) -> int:
        return self.size - sum(b - a for a, b in self.missing())

    @property
    def received(self) -> int:
        """Bytes on disk plus those held by connections on their way to it."""
        return self.size - sum(s.remaining for s in self.segments)

    @property
    def complete(self) -> bool:
        return not self.missing()


def normalise(intervals: Iterable[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Sort, clip to ``[0, size)``, drop empties and merge overlapping or touching ranges."""
    clipped = sorted((max(0, a), min(size, b)) for a, b in intervals)
    merged: list[tuple[int, int]] = []
    for a, b in clipped:
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def complement(missing: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of ``[0, size)`` not in ``missing`` (sorted, disjoint)."""
    ranges, cursor = [], 0
    for start, end in missing:
        if start > cursor:
            ranges.append((cursor, start))
        cursor = end
    if cursor < size:
        ranges.append((cursor, size))
    return ranges
