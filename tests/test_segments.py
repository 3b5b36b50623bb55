"""SegmentPlan: the pure planning core that hands byte ranges to connections (SPEC rule 4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dlman.segments import DEFAULT_MIN_SEGMENT, Segment, SegmentPlan, normalise


def covered(intervals):
    return sum(b - a for a, b in intervals)


def disjoint_intervals(size: int):
    """Sorted, non-touching intervals inside [0, size) (the shape ``missing()`` returns)."""
    return st.lists(st.integers(0, size), unique=True, max_size=12).map(sorted).map(
        lambda points: [(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)])


# -- examples ------------------------------------------------------------------------------

def test_new_plan_is_one_segment_covering_the_whole_file():
    plan = SegmentPlan(1000, min_segment=10)
    assert [(s.start, s.end, s.pos) for s in plan.segments] == [(0, 1000, 0)]
    assert plan.missing() == [(0, 1000)]
    assert plan.downloaded == 0
    assert not plan.complete


def test_empty_file_plan_is_already_complete():
    plan = SegmentPlan(0)
    assert plan.segments == []
    assert plan.missing() == []
    assert plan.complete
    assert plan.next_work() is None


def test_negative_size_is_rejected():
    try:
        SegmentPlan(-1)
    except ValueError:
        return
    raise AssertionError("SegmentPlan(-1) accepted")


def test_default_min_segment_is_one_mebibyte_and_min_segment_is_at_least_one():
    assert SegmentPlan(10).min_segment == DEFAULT_MIN_SEGMENT == 1 << 20
    assert SegmentPlan(10, min_segment=0).min_segment == 1


def test_plan_from_missing_intervals_merges_sorts_and_clips_them():
    plan = SegmentPlan(100, [(50, 60), (0, 10), (55, 70), (70, 80), (90, 200), (-5, 3)])
    assert plan.missing() == [(0, 10), (50, 80), (90, 100)]
    assert plan.downloaded == 100 - 10 - 30 - 10


def test_received_never_starts_behind_pos():
    assert Segment(0, 10, 4).received == 4
    assert Segment(0, 10, 4, received=7).received == 7


def test_split_evenly_cuts_into_requested_number_of_equal_pieces():
    plan = SegmentPlan(800, min_segment=10)
    plan.split_evenly(4)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 200), (200, 400), (400, 600), (600, 800)]


def test_split_evenly_never_makes_pieces_below_min_segment():
    plan = SegmentPlan(100, min_segment=40)
    plan.split_evenly(8)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 50), (50, 100)]


def test_file_smaller_than_two_min_segments_is_not_split():
    plan = SegmentPlan(79, min_segment=40)
    plan.split_evenly(8)
    assert len(plan.segments) == 1
    assert plan.split_largest() is None


def test_next_work_hands_out_idle_segments_before_splitting():
    plan = SegmentPlan(100, min_segment=10)
    plan.split_evenly(2)
    first, second = plan.next_work(), plan.next_work()
    assert (first.start, first.end, second.start, second.end) == (0, 50, 50, 100)
    assert first.busy and second.busy
    assert len(plan.segments) == 2


def test_next_work_takes_far_half_of_largest_remaining_when_all_are_busy():
    plan = SegmentPlan(100, min_segment=10)
    plan.split_evenly(2)
    first, second = plan.next_work(), plan.next_work()
    first.pos = first.received = 40          # 10 left
    second.pos = 60                          # 40 left, of which 10 already received in memory
    second.received = 70
    tail = plan.next_work()
    assert tail is not None and tail.busy
    assert (tail.start, tail.end, tail.pos) == (85, 100, 85)   # half of [70, 100) from received
    assert second.end == 85                  # the slow connection stops at the new end
    assert [s.start for s in plan.segments] == [0, 50, 85]


def takeover_minimum(plan: SegmentPlan) -> int:
    """The smallest piece a takeover may cut (a quarter of min_segment in this version)."""
    return getattr(plan, "min_takeover", plan.min_segment)


def test_takeover_may_cut_below_min_segment_but_not_below_min_takeover():
    plan = SegmentPlan(100, min_segment=40)
    plan.split_evenly(2)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 50), (50, 100)]
    plan.next_work(), plan.next_work()
    assert plan.split_largest() is None            # an up-front split keeps min_segment
    tail = plan.next_work()                         # a takeover needs only min_takeover
    assert takeover_minimum(plan) == 10
    assert tail is not None and (tail.start, tail.end) == (25, 50)


def test_next_work_returns_none_when_nothing_is_worth_splitting():
    plan = SegmentPlan(100, min_segment=40)
    plan.split_evenly(2)
    first, second = plan.next_work(), plan.next_work()
    first.pos = first.received = 31                 # 19 left: less than twice min_takeover
    second.pos = second.received = 81
    assert plan.next_work() is None
    assert len(plan.segments) == 2


def test_finished_segment_is_dropped_on_release_and_failed_one_is_handed_out_again():
    plan = SegmentPlan(100, min_segment=10)
    plan.split_evenly(2)
    first, second = plan.next_work(), plan.next_work()
    first.pos = first.received = first.end
    plan.release(first)
    assert first not in plan.segments
    second.pos = second.received = 60
    plan.release(second)                      # failed: keeps its progress, becomes idle
    assert second in plan.segments and not second.busy
    assert plan.next_work() is second
    assert plan.missing() == [(60, 100)]
    assert plan.downloaded == 60


def test_release_keeps_finished_segments_still_held_by_a_connection():
    plan = SegmentPlan(100, min_segment=10)
    plan.split_evenly(2)
    first, second = plan.next_work(), plan.next_work()
    first.pos = first.received = first.end
    second.pos = second.received = second.end
    plan.release(second)
    assert first in plan.segments            # still busy: its connection has not released it
    plan.release(first)
    assert plan.segments == []
    assert plan.complete and plan.downloaded == 100


def test_remaining_counts_from_received_bytes():
    segment = Segment(0, 100, 10, received=30)
    assert segment.remaining == 70
    assert not segment.done
    segment.pos = 100
    assert segment.remaining == 0 and segment.done


def test_normalise_merges_touching_ranges_and_drops_empty_ones():
    assert normalise([(5, 5), (0, 3), (3, 6), (8, 9), (20, 30)], 25) == [(0, 6), (8, 9), (20, 25)]


# -- properties ------------------------------------------------------------------------------

@given(size=st.integers(0, 10**13), min_segment=st.integers(1, 10**9), parts=st.integers(1, 64))
def test_split_evenly_gives_at_most_parts_pieces_each_at_least_min_segment(size, min_segment, parts):
    plan = SegmentPlan(size, min_segment=min_segment)
    plan.split_evenly(parts)
    lengths = [s.end - s.start for s in plan.segments]
    assert sum(lengths) == size
    assert len(lengths) <= max(1, min(parts, size // min_segment))
    if len(lengths) > 1:
        assert min(lengths) >= min_segment
    if size and len(lengths) < parts:
        # it stopped early only because no piece was worth halving
        assert max(lengths) < 2 * min_segment
    starts = [s.start for s in plan.segments]
    assert starts == sorted(starts)
    assert all(a.end == b.start for a, b in zip(plan.segments, plan.segments[1:]))


@given(st.integers(0, 5000).flatmap(lambda size: st.tuples(st.just(size), disjoint_intervals(size))),
       st.integers(1, 500))
def test_plan_built_from_missing_intervals_reproduces_them(size_and_missing, min_segment):
    size, missing = size_and_missing
    plan = SegmentPlan(size, missing, min_segment=min_segment)
    assert plan.missing() == missing
    assert plan.downloaded == size - covered(missing)
    again = SegmentPlan(size, plan.missing(), min_segment=min_segment)
    assert again.missing() == missing


class PlanMachine(RuleBasedStateMachine):
    """Connections take work, receive bytes, write them, fail or finish, in any order."""

    @initialize(size=st.integers(0, 3000), min_segment=st.integers(1, 200), data=st.data())
    def setup(self, size, min_segment, data):
        missing = data.draw(st.one_of(st.none(), disjoint_intervals(size)))
        self.plan = SegmentPlan(size, missing, min_segment=min_segment)
        self.size = size
        self.written = set(range(size)) if missing is not None else set()
        for a, b in missing or []:
            self.written -= set(range(a, b))
        self.held: list[Segment] = []     # segments a connection is working on
        self.last_downloaded = self.plan.downloaded

    def _check_new_segment(self, segment, minimum):
        assert segment.end - segment.start >= minimum
        assert segment.pos == segment.start

    @rule()
    def take_work(self):
        idle = [s for s in self.plan.segments if not s.busy and not s.done]
        before = list(self.plan.segments)
        remaining_before = {id(s): s.remaining for s in before}
        frontier_before = {id(s): max(s.pos, s.received) for s in before}
        segment = self.plan.next_work()
        if segment is not None and not idle:
            # the tail came off the segment with the most bytes left, cut in the middle of them
            cut = [s for s in before if s.end == segment.start]
            assert len(cut) == 1
            victim = cut[0]
            assert remaining_before[id(victim)] == max(remaining_before.values())
            assert segment.start == frontier_before[id(victim)] + remaining_before[id(victim)] // 2
        if idle:
            assert segment is idle[0], "an idle segment must be handed out before any split"
            assert self.plan.segments == before
        elif segment is not None:
            assert segment not in before
            self._check_new_segment(segment, takeover_minimum(self.plan))
        else:
            minimum = takeover_minimum(self.plan)
            assert all(s.remaining < 2 * minimum for s in self.plan.unfinished())
        if segment is not None:
            assert segment.busy
            self.held.append(segment)

    @rule()
    def split_largest(self):
        before = list(self.plan.segments)
        tail = self.plan.split_largest()
        if tail is not None:
            assert tail not in before and not tail.busy
            self._check_new_segment(tail, self.plan.min_segment)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000), amount=st.integers(0, 700))
    def receive(self, index, amount):
        segment = self.held[index % len(self.held)]
        segment.received = min(segment.end, segment.received + amount)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000))
    def write_received(self, index):
        segment = self.held[index % len(self.held)]
        new = set(range(segment.pos, segment.received))
        assert not new & self.written, "a byte was fetched twice"
        self.written |= new
        segment.pos = segment.received

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000))
    def release(self, index):
        segment = self.held.pop(index % len(self.held))
        segment.received = segment.pos        # what was only in memory is lost
        self.plan.release(segment)
        assert not segment.busy
        if segment.done:
            assert segment not in self.plan.segments

    @invariant()
    def segments_are_ordered_and_never_overlap(self):
        segments = self.plan.segments
        for s in segments:
            assert s.start <= s.pos <= s.received <= s.end
        for a, b in zip(segments, segments[1:]):
            assert a.end <= b.start

    @invariant()
    def written_and_missing_cover_the_file_exactly(self):
        missing = self.plan.missing()
        missing_bytes = set()
        for a, b in missing:
            missing_bytes |= set(range(a, b))
        assert not missing_bytes & self.written
        assert missing_bytes | self.written == set(range(self.size))
        assert covered(missing) + len(self.written) == self.size
        assert self.plan.downloaded == len(self.written)

    @invariant()
    def downloaded_is_monotonic(self):
        assert self.plan.downloaded >= self.last_downloaded
        self.last_downloaded = self.plan.downloaded

    @invariant()
    def held_segments_stay_in_the_plan(self):
        for segment in self.held:
            assert segment.busy
            assert any(s is segment for s in self.plan.segments)

    @invariant()
    def a_plan_rebuilt_from_missing_reproduces_it(self):
        rebuilt = SegmentPlan(self.size, self.plan.missing(), min_segment=self.plan.min_segment)
        assert rebuilt.missing() == self.plan.missing()


PlanMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPlanMachine = PlanMachine.TestCase


def test_split_cuts_the_given_segment_in_half_and_respects_the_minimum():
    plan = SegmentPlan(100, min_segment=10)
    first = plan.segments[0]
    first.busy = True
    first.received = 20
    tail = plan.split(first)
    assert tail is not None and (first.end, tail.start, tail.end) == (60, 60, 100) and not tail.busy
    small = SegmentPlan(30, min_segment=20)
    assert small.split(small.segments[0]) is None and small.missing() == [(0, 30)]


def test_a_refused_takeover_goes_back_to_the_segment_it_was_cut_from():
    plan = SegmentPlan(4 << 20, min_segment=1 << 20)
    head = plan.next_work()
    head.reach = 4 << 20                      # its body runs to the end of the file
    tail = plan.split(head)
    tail.busy = True
    plan.give_back(tail)
    assert plan.segments == [head] and head.end == 4 << 20


def test_a_takeover_is_not_given_back_when_the_body_stops_short_or_bytes_arrived():
    plan = SegmentPlan(4 << 20, min_segment=1 << 20)
    head = plan.next_work()
    head.reach = 2 << 20                      # a closed range: it will not deliver the tail's bytes
    tail = plan.split(head)
    tail.busy = True
    plan.give_back(tail)
    assert len(plan.segments) == 2 and not tail.busy
    head.reach = 4 << 20
    tail.pos = tail.received = tail.start + 10  # the tail's own connection wrote some of it
    tail.busy = True
    plan.give_back(tail)
    assert len(plan.segments) == 2 and plan.next_work() is tail


def test_written_is_the_complement_of_missing():
    plan = SegmentPlan(100, [(10, 20), (50, 100)], min_segment=1)
    assert plan.written() == [(0, 10), (20, 50)]


@pytest.mark.parametrize("size, missing, limit, useful", [
    (16 << 10, None, 8, 1),                       # a small file: one connection, not eight that stop at once
    (256 << 10, None, 16, 1),                     # one piece of min_takeover
    (4 << 20, None, 16, 16),                      # 1 MiB pieces, then 256 KiB takeovers
    (2 << 20, None, 16, 8),
    (64 << 20, None, 4, 4),                       # never more than asked
    (100, [(0, 10), (20, 30), (40, 50)], 8, 3),   # a resume: one per missing range at least
    (0, None, 8, 1),
])
def test_useful_connections(size, missing, limit, useful):
    assert SegmentPlan(size, missing).useful_connections(limit) == useful


@pytest.mark.parametrize("size", [1, 300 << 10, 700 << 10, 3 << 20, 5_000_001, 64 << 20])
def test_useful_connections_never_leave_a_takeover_without_a_taker(size):
    """However many pieces takeovers can cut, there is a connection for each of them."""
    plan = SegmentPlan(size)
    pieces = 0
    while plan.next_work() is not None:
        pieces += 1
    assert pieces <= plan.useful_connections(1 << 30)
