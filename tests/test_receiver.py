"""The receiver (dlman.receiver): a body into its segment, with a real part file and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlman.receiver import FLUSH_AGE, Mismatch, Receiver, Stalled, Watchdog
from dlman.segments import Segment
from dlman.storage import PartFile


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def body(chunks: list[bytes], clock: Clock | None = None, step: float = 0.0,
               gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """The chunks, the clock moving ``step`` before each; then the body stays open until ``gate``."""
    for chunk in chunks:
        if clock is not None:
            clock.now += step
        yield chunk
    if gate is not None:
        await gate.wait()


def run(coroutine):
    return asyncio.run(coroutine)


async def part_in(tmp_path: Path, size: int = 0) -> PartFile:
    part = PartFile(tmp_path / "f")
    await part.lock()
    if size:
        await part.write(0, [bytes(size)])
    return part


def test_bytes_land_at_their_offsets_and_never_past_the_segment(tmp_path):
    async def main() -> bytes:
        part = await part_in(tmp_path)
        segment = Segment(10, 30, 10)
        await Receiver(part, segment, flush_bytes=8, timeout=30).receive(body([b"a" * 7, b"b" * 7, b"c" * 7]))
        assert (segment.pos, segment.received) == (30, 30)
        return part.part.read_bytes()
    assert run(main()) == bytes(10) + b"a" * 7 + b"b" * 7 + b"c" * 6


def test_never_past_the_content_range_either(tmp_path):
    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(0, 100, 0)
        await Receiver(part, segment, flush_bytes=8, timeout=30).receive(body([b"x" * 30, b"junk" * 10]),
                                                                           body_end=25)
        return segment
    assert run(main()).pos == 25


def test_a_slow_body_is_written_by_age_not_only_when_the_buffer_is_full(tmp_path):
    clock = Clock()
    gate = asyncio.Event()

    async def main() -> None:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        receiver = Receiver(part, segment, flush_bytes=1 << 20, timeout=30, clock=clock)
        task = asyncio.create_task(receiver.receive(body([b"a" * 100, b"b" * 100, b"c" * 100], clock,
                                                         FLUSH_AGE / 2, gate)))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if segment.pos:
                break
        # the first bytes had waited FLUSH_AGE when the third chunk came: all were written then,
        # with the buffer far from full and the body still open
        assert segment.pos == 300 and not task.done()
        gate.set()
        await task
        assert segment.pos == 300
    run(main())


def test_flush_writes_everything_held_and_waits_for_it(tmp_path):
    gate = asyncio.Event()

    async def main() -> None:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        receiver = Receiver(part, segment, flush_bytes=1 << 20, timeout=30)
        task = asyncio.create_task(receiver.receive(body([b"a" * 100], gate=gate)))
        await asyncio.sleep(0.01)
        assert segment.received == 100 and segment.pos == 0
        await receiver.flush()   # what the saver does before every save
        assert segment.pos == 100 and part.part.read_bytes() == b"a" * 100
        gate.set()
        await task
    run(main())


def test_a_cancel_writes_what_was_held(tmp_path):
    gate = asyncio.Event()

    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        task = asyncio.create_task(Receiver(part, segment, flush_bytes=1 << 20, timeout=30).receive(
            body([b"a" * 100], gate=gate)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return segment
    segment = run(main())
    assert segment.pos == segment.received == 100


@pytest.mark.parametrize("chunks", [[b"abcdef", b"NEW"], [b"ab", b"cd", b"efNEW"], [b"abcdefNEW"]])
def test_the_overlap_is_compared_then_the_rest_written(tmp_path, chunks):
    async def main() -> tuple[int, bytes]:
        part = await part_in(tmp_path)
        segment = Segment(6, 9, 6)
        confirmed = await Receiver(part, segment, flush_bytes=8, timeout=30).receive(body(chunks),
                                                                                     expect=b"abcdef")
        return confirmed, part.part.read_bytes()
    assert run(main()) == (6, bytes(6) + b"NEW")


def test_an_overlap_that_differs_is_a_mismatch_and_nothing_is_written(tmp_path):
    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(6, 9, 6)
        with pytest.raises(Mismatch):
            await Receiver(part, segment, flush_bytes=8, timeout=30).receive(body([b"abcXefNEW"]), expect=b"abcdef")
        return segment
    assert run(main()).pos == 6


def test_the_watchdog_trips_on_a_trickle_and_not_on_a_steady_body():
    clock = Clock()
    watchdog = Watchdog(10, clock)
    for _ in range(20):
        clock.now += 1
        watchdog.feed(200)          # 2000 bytes per 10 s: slow but alive
    with pytest.raises(Stalled):
        for _ in range(20):
            clock.now += 1
            watchdog.feed(50)       # 500 bytes per 10 s: a trickle
