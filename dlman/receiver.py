"""Moving one response body into its segment of the part file.

Bytes are buffered per connection and written with one positioned write per
buffer, off the event loop, one write in flight at a time. A buffer is written
when it is full, when its oldest byte has waited ``FLUSH_AGE`` seconds, and
whenever the saver asks (``flush``), so the resume state can claim what has
arrived however slow the link (SPEC rule 5). ``segment.pos`` moves only once a
write has landed, so a failure or a cancel at any await leaves the segment
claiming exactly the bytes that are in the file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from dlman.ratelimit import RateLimiter
from dlman.segments import Segment
from dlman.storage import PartFile

FLUSH_AGE = 0.5            # seconds a received byte may wait in memory (half the save interval)
LOW_SPEED_BYTES = 1024     # fewer bytes than this in ``timeout`` seconds is a stall


class Stalled(Exception):
    """The body trickles too slowly to be worth waiting for."""


class Mismatch(Exception):
    """The re-fetched bytes before the resume point differ from those on disk."""


class Watchdog:
    """Low-speed detection: httpx's read timeout is per read, so a trickle never trips it."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.started = clock()
        self.count = 0

    def feed(self, size: int) -> None:
        self.count += size
        now = self.clock()
        if now - self.started >= self.window:
            if self.count < LOW_SPEED_BYTES:
                raise Stalled(f"less than {LOW_SPEED_BYTES} bytes in {self.window:.0f}s")
            self.started, self.count = now, 0


class Receiver:
    """Writes the bodies of one connection into its current segment (see the module docstring)."""

    def __init__(self, part: PartFile, segment: Segment, *, flush_bytes: int, timeout: float,
                 limiter: RateLimiter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.part = part
        self.segment = segment
        self.flush_bytes = flush_bytes
        self.timeout = timeout
        self.limiter = limiter
        self.clock = clock
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._oldest = 0.0
        self._write_at = segment.pos
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def receive(self, body: AsyncIterator[bytes], body_end: int | None = None,
                      expect: bytes = b"") -> int:
        """Stream ``body`` into the segment, never past its end nor past ``body_end``.

        ``expect`` holds bytes already on disk just before the segment's position:
        the body starts with its re-fetched copy, compared here (``Mismatch``)
        under the same stall watchdog as the data. Returns how many of them the
        body confirmed (fewer when it ended early).
        """
        segment = self.segment
        watchdog = Watchdog(self.timeout, self.clock)
        limit = (1 << 63) if body_end is None else body_end
        checked = 0
        try:
            async for chunk in body:
                size = len(chunk)
                if checked < len(expect):
                    take = min(size, len(expect) - checked)
                    if chunk[:take] != expect[checked:checked + take]:
                        raise Mismatch()
                    checked += take
                    watchdog.feed(size)
                    if take == size:
                        continue
                    chunk = chunk[take:]
                    size = len(chunk)
                room = min(segment.end, limit) - segment.received
                # A body that ends where the segment does is read to its end, so that its
                # connection goes back to the pool; any other is cut as soon as it is full.
                if size > room or (size == room and segment.end != body_end):
                    if room > 0:
                        self._append(chunk[:room])
                    break
                self._append(chunk)
                if self._buffered >= self.flush_bytes or self.clock() - self._oldest >= FLUSH_AGE:
                    async with self._lock:
                        await self._start_write()
                if self.limiter is not None:
                    await self.limiter.acquire(size)
                watchdog.feed(size)
            await self.flush()
        finally:
            await self._settle()
        return checked

    def _append(self, chunk: bytes) -> None:
        if not self._chunks:
            self._oldest = self.clock()
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.segment.received += len(chunk)

    async def flush(self) -> None:
        """Write everything buffered and wait until it has landed (the saver calls this first)."""
        async with self._lock:
            await self._start_write()
            await self._wait_write()

    async def _start_write(self) -> None:
        """Wait for the write in flight, then start one for the buffer (caller holds the lock)."""
        await self._wait_write()
        if self._chunks:
            chunks, at = self._chunks, self._write_at
            self._chunks, self._write_at = [], at + self._buffered
            self._buffered = 0
            self._pending = asyncio.create_task(self._write(at, chunks))

    async def _wait_write(self) -> None:
        if self._pending is not None:
            pending = self._pending
            try:
                await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._pending = None

    async def _write(self, offset: int, chunks: list[bytes]) -> None:
        await self.part.write(offset, chunks)
        self.segment.pos = offset + sum(len(c) for c in chunks)

    async def _settle(self) -> None:
        """On any exit: let the write in flight land, write the rest now, forget nothing."""
        segment = self.segment
        pending, self._pending = self._pending, None
        if pending is not None:
            await asyncio.shield(asyncio.wait([pending]))
            if not pending.cancelled():
                pending.exception()  # raised to the receive loop already, or reported by it below
        if self._chunks and segment.pos == self._write_at:
            self.part.write_now(self._write_at, self._chunks)
            segment.pos = self._write_at + self._buffered
        self._chunks, self._buffered = [], 0
        segment.received = segment.pos
