"""Moving one response body into its segment of the part file.

Bytes land in one of two buffers per receiver, taken from a pool so that a new
body reuses memory that is already mapped (a fresh allocation page-faults on every
page). When the transport offers a ``readinto`` fast path (``transport.BodyReader``)
the socket or TLS layer reads straight into the free end of the buffer; otherwise
the chunks of ``aiter_raw()`` are copied in. Each buffer is written with one
positioned write, off the event loop, one write in flight at a time, while the other
buffer fills. A buffer is written when it is full, when its oldest byte has waited
``FLUSH_AGE`` seconds, and whenever the saver asks (``flush``), so the resume state
can claim what has arrived however slow the link (SPEC rule 5). ``segment.pos``
moves only once a write has landed, so a failure or a cancel at any await leaves
the segment claiming exactly the bytes that are in the file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from dlman.ratelimit import RateLimiter
from dlman.segments import Segment
from dlman.storage import PartFile

FLUSH_AGE = 0.5            # seconds a received byte may wait in memory (half the save interval)
LOW_SPEED_BYTES = 1024     # fewer bytes than this in ``timeout`` seconds is a stall
LIMITED_READ = 64 << 10    # largest read under a rate limit: its bursts stay short
POOLED_BYTES = 16 << 20    # buffers kept for reuse once their receivers are done


class Stalled(Exception):
    """The body trickles too slowly to be worth waiting for."""


class Mismatch(Exception):
    """The re-fetched bytes before the resume point differ from those on disk."""


class BodyReader(Protocol):
    """A body that can be read into the caller's memory (``transport.BodyReader``)."""

    @property
    def remaining(self) -> int:
        """Body bytes not read yet."""
        ...

    async def readinto(self, view: memoryview) -> int:
        """Fill the start of ``view``; 0 when the rest must come from iterating the body."""
        ...


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


class BufferPool:
    """Receive buffers that outlive their receiver, up to ``limit`` bytes of them."""

    def __init__(self, limit: int = POOLED_BYTES) -> None:
        self.limit = limit
        self._free: dict[int, list[bytearray]] = {}
        self._kept = 0
        self._lock = threading.Lock()  # engines may run in several threads

    def take(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._kept -= size
                return free.pop()
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        size = len(buffer)
        with self._lock:
            if self._kept + size <= self.limit:
                self._free.setdefault(size, []).append(buffer)
                self._kept += size


POOL = BufferPool()


class Receiver:
    """Writes the bodies of one connection into its current segment (see the module docstring).

    The buffer being filled is ``_view``: ``[_head:_tail]`` holds received bytes not yet
    handed to a write, which go to the file at ``_write_at``; the write in flight reads
    either an earlier part of it or the other buffer (``_spare``), never the free end.
    """

    def __init__(self, part: PartFile, segment: Segment, *, flush_bytes: int, timeout: float,
                 limiter: RateLimiter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.part = part
        self.segment = segment
        self.flush_bytes = flush_bytes
        self.timeout = timeout
        self.limiter = limiter
        self.clock = clock
        self._buffer: bytearray | None = None
        self._spare: bytearray | None = None
        self._view = memoryview(b"")
        self._head = 0
        self._tail = 0
        self._oldest = 0.0
        self._write_at = segment.pos
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def receive(self, body: AsyncIterator[bytes], body_end: int | None = None,
                      expect: bytes = b"", reader: BodyReader | None = None) -> int:
        """Stream the body into the segment, never past its end nor past ``body_end``.

        With ``reader`` the body is read through it first, and ``body`` gives the rest
        (nothing, when the reader reached the end). ``expect`` holds bytes already on
        disk just before the segment's position: the body starts with its re-fetched
        copy, compared here (``Mismatch``) under the same stall watchdog as the data.
        Returns how many of them the body confirmed (fewer when it ended early).
        """
        watchdog = Watchdog(self.timeout, self.clock)
        limit = (1 << 63) if body_end is None else body_end
        checked = 0
        try:
            cut = False
            if reader is not None:
                checked, cut = await self._read_fast(reader, body_end, limit, expect, watchdog)
            if not cut:
                checked = await self._iterate(body, body_end, limit, expect, checked, watchdog)
            await self.flush()
        finally:
            await self._settle()
        return checked

    async def _read_fast(self, reader: BodyReader, body_end: int | None, limit: int, expect: bytes,
                         watchdog: Watchdog) -> tuple[int, bool]:
        """Read into the buffer until the reader ends: (``expect`` bytes confirmed, whether
        the body is to be cut rather than iterated to its end). A body that ends where the
        segment does is read to its end, so that its connection goes back to the pool; any
        other is cut once the segment is full."""
        segment = self.segment
        checked = 0
        while True:
            if checked < len(expect):
                want = len(expect) - checked
            else:
                want = min(segment.end, limit) - segment.received
                if want <= 0:
                    if segment.end == body_end and reader.remaining == 0:
                        return checked, False  # the body ends with the segment: iterating ends it
                    # A full segment whose body runs on is cut when the next bytes arrive, as on
                    # the iterated path: a refused takeover may have given the rest back by then.
                    want = LIMITED_READ
            if self.limiter is not None:
                want = min(want, LIMITED_READ)
            view = self._free(want)
            size = await reader.readinto(view)
            if not size:
                return checked, False
            if checked < len(expect):
                if view[:size] != expect[checked:checked + size]:
                    raise Mismatch()
                checked += size
            else:
                # A takeover may have cut the segment while the read was in flight.
                room = min(segment.end, limit) - segment.received
                if size > room:
                    if room > 0:
                        await self._landed(room)
                    return checked, True
                await self._landed(size)
                if self.limiter is not None:
                    await self.limiter.acquire(size)
            watchdog.feed(size)

    async def _iterate(self, body: AsyncIterator[bytes], body_end: int | None, limit: int,
                       expect: bytes, checked: int, watchdog: Watchdog) -> int:
        """Copy the chunks of ``body`` into the buffer; returns the ``expect`` bytes confirmed."""
        segment = self.segment
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
            # As in _read_fast: a body ending with the segment is read to its end, any other cut.
            if size > room or (size == room and segment.end != body_end):
                if room > 0:
                    await self._copy_in(chunk, room, limit)
                break
            if await self._copy_in(chunk, size, limit) < size:
                break
            if self.limiter is not None:
                await self.limiter.acquire(size)
            watchdog.feed(size)
        return checked

    async def _copy_in(self, chunk: bytes, size: int, limit: int) -> int:
        """Put the first ``size`` bytes of ``chunk`` into the buffer (it may fill more than one);
        how many went in: fewer when a takeover cut the segment while a full buffer was written."""
        segment = self.segment
        data = memoryview(chunk)
        done = 0
        while done < size:
            room = min(segment.end, limit) - segment.received
            if room <= 0:
                break
            view = self._free(min(size - done, room))
            count = len(view)
            view[:] = data[done:done + count]
            done += count
            await self._landed(count)
        return done

    def _free(self, most: int) -> memoryview:
        """The free end of the buffer being filled, at most ``most`` (> 0) bytes, never empty:
        a full buffer is swapped for the other one as soon as it is full (``_start_write``)."""
        if self._buffer is None:
            self._buffer = POOL.take(self.flush_bytes)
            self._view = memoryview(self._buffer)
        return self._view[self._tail:self._tail + most]

    async def _landed(self, size: int) -> None:
        """``size`` bytes were put at the buffer's free end: count them; write a full or old buffer."""
        if self._tail == self._head:
            self._oldest = self.clock()
        self._tail += size
        self.segment.received += size
        if self._tail == len(self._view) or self.clock() - self._oldest >= FLUSH_AGE:
            async with self._lock:
                await self._start_write()

    async def flush(self) -> None:
        """Write everything buffered and wait until it has landed (the saver calls this first)."""
        async with self._lock:
            await self._start_write()
            await self._wait_write()

    async def _start_write(self) -> None:
        """Wait for the write in flight, then start one for what is buffered; a full buffer
        is then swapped for the other one, which no write uses any more (caller holds the lock)."""
        await self._wait_write()
        head, tail = self._head, self._tail
        if tail > head:
            at = self._write_at
            self._write_at, self._head = at + tail - head, tail
            self._pending = asyncio.create_task(self._write(at, self._view[head:tail]))
        if self._buffer is not None and tail == len(self._buffer):
            spare = self._spare if self._spare is not None else POOL.take(self.flush_bytes)
            self._buffer, self._spare = spare, self._buffer
            self._view = memoryview(spare)
            self._head = self._tail = 0

    async def _wait_write(self) -> None:
        if self._pending is not None:
            pending = self._pending
            try:
                await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._pending = None

    async def _write(self, offset: int, data: memoryview) -> None:
        await self.part.write(offset, [data])
        self.segment.pos = offset + len(data)

    async def _settle(self) -> None:
        """On any exit: let the write in flight land, write the rest now, forget nothing."""
        segment = self.segment
        async with self._lock:  # a flush by the saver may be starting a write of these buffers
            pending, self._pending = self._pending, None
            if pending is not None:
                # A second cancel here leaves the buffers to that write (they are not pooled).
                await asyncio.shield(asyncio.wait([pending]))
                if not pending.cancelled():
                    pending.exception()  # raised to the receive loop already, or reported by it below
            try:
                head, tail = self._head, self._tail
                if tail > head and segment.pos == self._write_at:
                    self.part.write_now(self._write_at, [self._view[head:tail]])
                    segment.pos = self._write_at + tail - head
            finally:
                self._release()
                segment.received = segment.pos

    def _release(self) -> None:
        """Give the buffers back to the pool (no write uses them any more) and forget the rest."""
        self._view = memoryview(b"")
        for buffer in (self._buffer, self._spare):
            if buffer is not None:
                POOL.give(buffer)
        self._buffer = self._spare = None
        self._head = self._tail = 0
