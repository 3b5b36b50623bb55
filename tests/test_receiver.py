"""The receiver (dlman.receiver): a body into its segment, with a real part file and a fake clock.

Each behaviour is checked on both ways a body arrives: iterated chunks (``aiter_raw()``),
and a reader that fills the receiver's own buffer (the transport's fast path), which gets
the chunks one ``readinto`` at a time, never more than the view it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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


class Reader:
    """A ``readinto`` body serving ``chunks`` (each one over as many reads as the views need);
    0 at the end, after which the iterated body (empty) takes over."""

    def __init__(self, chunks: list[bytes], clock: Clock | None = None, step: float = 0.0,
                 gate: asyncio.Event | None = None, during: Callable[[int], None] | None = None) -> None:
        self.chunks = [memoryview(c) for c in chunks]
        self.during = during  # called with the read's number while it is in flight
        self.clock, self.step, self.gate = clock, step, gate
        self.views: list[int] = []
        self._fresh = True

    @property
    def remaining(self) -> int:
        return sum(len(c) for c in self.chunks)

    async def readinto(self, view: memoryview) -> int:
        self.views.append(len(view))
        await asyncio.sleep(0)
        if self.during is not None:
            self.during(len(self.views))
        if not self.chunks:
            if self.gate is not None:
                await self.gate.wait()
            return 0
        if self._fresh and self.clock is not None:
            self.clock.now += self.step
        chunk = self.chunks[0]
        count = min(len(view), len(chunk))
        view[:count] = chunk[:count]
        self.chunks[0] = chunk[count:]
        self._fresh = not self.chunks[0]
        if self._fresh:
            self.chunks.pop(0)
        return count


async def nothing() -> AsyncIterator[bytes]:
    return
    yield b""


VIAS = ["iterator", "reader"]


def receive(receiver: Receiver, via: str, chunks: list[bytes], clock: Clock | None = None,
            step: float = 0.0, gate: asyncio.Event | None = None, **kwargs):  # type: ignore[no-untyped-def]
    """``receiver.receive`` of ``chunks``, iterated or read into the receiver's buffers."""
    if via == "iterator":
        return receiver.receive(body(chunks, clock, step, gate), **kwargs)
    return receiver.receive(nothing(), reader=Reader(chunks, clock, step, gate), **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


async def part_in(tmp_path: Path, size: int = 0) -> PartFile:
    part = PartFile(tmp_path / "f")
    await part.lock()
    if size:
        await part.write(0, [bytes(size)])
    return part


@pytest.mark.parametrize("via", VIAS)
def test_bytes_land_at_their_offsets_and_never_past_the_segment(tmp_path, via):
    async def main() -> bytes:
        part = await part_in(tmp_path)
        segment = Segment(10, 30, 10)
        await receive(Receiver(part, segment, flush_bytes=8, timeout=30), via, [b"a" * 7, b"b" * 7, b"c" * 7])
        assert (segment.pos, segment.received) == (30, 30)
        return part.part.read_bytes()
    assert run(main()) == bytes(10) + b"a" * 7 + b"b" * 7 + b"c" * 6


@pytest.mark.parametrize("via", VIAS)
def test_never_past_the_content_range_either(tmp_path, via):
    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(0, 100, 0)
        await receive(Receiver(part, segment, flush_bytes=8, timeout=30), via, [b"x" * 30, b"junk" * 10],
                      body_end=25)
        assert part.part.read_bytes() == b"x" * 25
        return segment
    assert run(main()).pos == 25


@pytest.mark.parametrize("via", VIAS)
def test_a_slow_body_is_written_by_age_not_only_when_the_buffer_is_full(tmp_path, via):
    clock = Clock()
    gate = asyncio.Event()

    async def main() -> None:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        receiver = Receiver(part, segment, flush_bytes=1 << 20, timeout=30, clock=clock)
        task = asyncio.create_task(receive(receiver, via, [b"a" * 100, b"b" * 100, b"c" * 100], clock,
                                           FLUSH_AGE / 2, gate))
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


@pytest.mark.parametrize("via", VIAS)
def test_flush_writes_everything_held_and_waits_for_it(tmp_path, via):
    gate = asyncio.Event()

    async def main() -> None:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        receiver = Receiver(part, segment, flush_bytes=1 << 20, timeout=30)
        task = asyncio.create_task(receive(receiver, via, [b"a" * 100], gate=gate))
        await asyncio.sleep(0.01)
        assert segment.received == 100 and segment.pos == 0
        await receiver.flush()   # what the saver does before every save
        assert segment.pos == 100 and part.part.read_bytes() == b"a" * 100
        gate.set()
        await task
    run(main())


@pytest.mark.parametrize("via", VIAS)
def test_a_cancel_writes_what_was_held(tmp_path, via):
    gate = asyncio.Event()

    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(0, 1 << 20, 0)
        task = asyncio.create_task(receive(Receiver(part, segment, flush_bytes=1 << 20, timeout=30), via,
                                           [b"a" * 100], gate=gate))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return segment
    segment = run(main())
    assert segment.pos == segment.received == 100


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("chunks", [[b"abcdef", b"NEW"], [b"ab", b"cd", b"efNEW"], [b"abcdefNEW"]])
def test_the_overlap_is_compared_then_the_rest_written(tmp_path, chunks, via):
    async def main() -> tuple[int, bytes]:
        part = await part_in(tmp_path)
        segment = Segment(6, 9, 6)
        confirmed = await receive(Receiver(part, segment, flush_bytes=8, timeout=30), via, chunks,
                                  expect=b"abcdef")
        return confirmed, part.part.read_bytes()
    assert run(main()) == (6, bytes(6) + b"NEW")


@pytest.mark.parametrize("via", VIAS)
def test_an_overlap_that_differs_is_a_mismatch_and_nothing_is_written(tmp_path, via):
    async def main() -> Segment:
        part = await part_in(tmp_path)
        segment = Segment(6, 9, 6)
        with pytest.raises(Mismatch):
            await receive(Receiver(part, segment, flush_bytes=8, timeout=30), via, [b"abcXefNEW"],
                          expect=b"abcdef")
        assert part.part.read_bytes() == b""
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


@pytest.mark.parametrize("via", VIAS)
def test_a_trickled_body_is_a_stall(tmp_path, via):
    clock = Clock()

    async def main() -> None:
        part = await part_in(tmp_path)
        receiver = Receiver(part, Segment(0, 1 << 20, 0), flush_bytes=1 << 20, timeout=10, clock=clock)
        with pytest.raises(Stalled):
            await receive(receiver, via, [b"t" * 10] * 30, clock, 1.0)
    run(main())


@pytest.mark.parametrize("body_end, chunks, reads, finished", [
    (16, [b"x" * 16], [8, 8], True),                # the body ends with the segment: iterating ends it
    (32, [b"x" * 16, b"y" * 16], [8, 8, 8], False),  # a takeover shortened the segment: cut
    (16, [b"x" * 16, b"y" * 16], [8, 8, 8], False),  # the body runs on past its Content-Range: cut
])
def test_a_body_ending_with_its_segment_is_read_to_its_end_and_any_other_is_cut(tmp_path, body_end, chunks,
                                                                                 reads, finished):
    """The connection of a body that ends with the segment goes back to the pool: once the
    segment is full, the iterated body finishes it. A body that runs on past a full segment
    is cut when its next bytes arrive (none of them written), and not iterated."""
    async def main() -> tuple[list[int], bool]:
        iterated = False

        async def rest() -> AsyncIterator[bytes]:
            nonlocal iterated
            iterated = True
            return
            yield b""
        part = await part_in(tmp_path)
        reader = Reader(chunks)
        await Receiver(part, Segment(0, 16, 0), flush_bytes=8, timeout=30).receive(rest(), body_end,
                                                                                  reader=reader)
        assert part.part.read_bytes()[:16] == b"x" * 16
        return reader.views, iterated
    assert run(main()) == (reads, finished)


def test_a_segment_given_back_while_its_body_runs_on_is_filled_by_that_body(tmp_path):
    """A takeover cut the segment at 16, then failed and gave the rest back (``give_back``)
    before the body's next bytes arrived: the body goes on filling the segment."""
    segment = Segment(0, 16, 0)

    def give_back(read: int) -> None:
        if read == 3:
            segment.end = 32

    async def main() -> bytes:
        part = await part_in(tmp_path)
        reader = Reader([b"x" * 16, b"y" * 16], during=give_back)
        await Receiver(part, segment, flush_bytes=8, timeout=30).receive(nothing(), 32, reader=reader)
        return part.part.read_bytes()
    assert run(main()) == b"x" * 16 + b"y" * 16
    assert segment.pos == 32


def test_reads_fill_the_free_end_of_the_buffer_and_writes_take_whole_buffers(tmp_path, monkeypatch):
    """One positioned write per buffer (not per read), and a read never asks for more than the
    buffer has free nor more than the segment still needs."""
    writes: list[tuple[int, int, int]] = []
    original = PartFile.write

    async def counting(self, offset, chunks):  # type: ignore[no-untyped-def]
        writes.append((offset, len(chunks), sum(len(c) for c in chunks)))
        await original(self, offset, chunks)
    monkeypatch.setattr(PartFile, "write", counting)

    async def main() -> list[int]:
        part = await part_in(tmp_path)
        reader = Reader([bytes([i]) * 300 for i in range(8)] + [bytes([8]) * 100])
        receiver = Receiver(part, Segment(0, 2500, 0), flush_bytes=1000, timeout=30)
        await receiver.receive(nothing(), 2500, reader=reader)
        assert part.part.read_bytes() == b"".join(bytes([i]) * 300 for i in range(8)) + bytes([8]) * 100
        return reader.views
    views = run(main())
    assert writes == [(0, 1, 1000), (1000, 1, 1000), (2000, 1, 500)]
    assert max(views) <= 1000 and views[-1] == 100   # the last read asks only for what the segment lacks


def test_a_takeover_while_a_read_is_in_flight_never_lets_bytes_past_the_new_end(tmp_path):
    """Another connection cuts the segment at 150 while the second read is under way: of the
    300 bytes it brings, only the 50 below the cut are kept, and the body is cut there."""
    segment = Segment(0, 1000, 0)

    def take_over(read: int) -> None:
        if read == 2:
            segment.end = 150

    async def main() -> bytes:
        part = await part_in(tmp_path)
        reader = Reader([b"a" * 100, b"b" * 300, b"c" * 300], during=take_over)
        await Receiver(part, segment, flush_bytes=1000, timeout=30).receive(nothing(), 1000, reader=reader)
        assert len(reader.views) == 2  # nothing read after the cut
        return part.part.read_bytes()
    assert run(main()) == b"a" * 100 + b"b" * 50
    assert segment.pos == segment.received == 150


def test_a_takeover_while_a_chunk_is_copied_in_never_lets_bytes_past_the_new_end(tmp_path, monkeypatch):
    """An iterated chunk larger than the free buffer goes in piece by piece, with a write between
    the pieces: a takeover during that write is honoured for the rest of the chunk."""
    segment = Segment(0, 1000, 0)
    original = PartFile.write

    async def taken_over(self, offset, chunks):  # type: ignore[no-untyped-def]
        if segment.end == 1000:  # as a takeover does: never below what was received
            segment.end = segment.received + 10
        await original(self, offset, chunks)
    monkeypatch.setattr(PartFile, "write", taken_over)

    async def main() -> bytes:
        part = await part_in(tmp_path)
        await Receiver(part, segment, flush_bytes=64, timeout=30).receive(body([b"x" * 300, b"y" * 300]), 1000)
        return part.part.read_bytes()
    data = run(main())
    assert segment.end < 300 and data == b"x" * segment.end
    assert segment.pos == segment.end
