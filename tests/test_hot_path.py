"""Guards on the hot path that need no clock: how the bytes reach the disk.

Throughput is measured by scripts/bench.py; these tests only pin the mechanisms that
keep it: bodies read straight into the receivers' buffers (no ``bytes`` per network
chunk, no copy through h11), one large positioned write per buffer (never one thread
hop per network chunk), buffers reused from body to body, and connections reused when
a body ends exactly where its segment does.
"""

from __future__ import annotations

import h11
import pytest

import dlman
from dlman import receiver, storage, transport

MiB = 1 << 20


@pytest.fixture
def write_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = storage.PartFile.write

    async def counting(self: storage.PartFile, offset: int, chunks: list[bytes]) -> None:
        assert len(chunks) == 1  # one buffer per positioned write
        sizes.append(sum(len(c) for c in chunks))
        await original(self, offset, chunks)

    monkeypatch.setattr(storage.PartFile, "write", counting)
    return sizes


@pytest.mark.parametrize("connections", [1, 4, 16])
def test_writes_are_large_and_few(server, make_data, tmp_path, write_sizes, connections):
    size = 32 * MiB
    server.add("/w", make_data(size))
    dlman.download(server.url("/w"), tmp_path / "w", connections=connections)
    assert sum(write_sizes) == size
    # full buffers of at least 256 KiB, plus at most a few short writes per connection
    # (the end of each segment it fills): never anything like one write per network chunk
    assert len(write_sizes) <= size // (256 << 10) + 4 * connections, write_sizes


def test_bodies_are_read_into_the_receive_buffers_not_through_h11(server, make_data, tmp_path,
                                                                   monkeypatch):
    """The fast path: after the head, body bytes reach neither h11 nor a ``bytes`` of the
    transport; a read lands in a receiver's buffer (only what came with a head, at most one
    read of 64 KiB per response, takes the long way)."""
    size = 32 * MiB
    server.add("/f", make_data(size))
    fed = [0]     # bytes given to h11 (heads, and bodies on the slow path)
    taken = [0]   # bytes the transport handed out as new bytes objects
    read_into = [0]
    responses = [0]
    feed, take, readinto = h11.Connection.receive_data, transport._Protocol.take, transport.BodyReader.readinto
    init = transport.BodyReader.__init__

    def counting_feed(self, data):  # type: ignore[no-untyped-def]
        fed[0] += len(data)
        return feed(self, data)

    def counting_take(self, max_bytes):  # type: ignore[no-untyped-def]
        data = take(self, max_bytes)
        taken[0] += len(data)
        return data

    async def counting_readinto(self, view):  # type: ignore[no-untyped-def]
        count = await readinto(self, view)
        read_into[0] += count
        return count

    def counting_init(self, *args):  # type: ignore[no-untyped-def]
        responses[0] += 1
        init(self, *args)
    monkeypatch.setattr(h11.Connection, "receive_data", counting_feed)
    monkeypatch.setattr(transport._Protocol, "take", counting_take)
    monkeypatch.setattr(transport.BodyReader, "readinto", counting_readinto)
    monkeypatch.setattr(transport.BodyReader, "__init__", counting_init)
    dlman.download(server.url("/f"), tmp_path / "f", connections=4)
    assert (tmp_path / "f").stat().st_size == size
    assert responses[0] >= 4
    assert taken[0] <= fed[0] <= responses[0] * (64 << 10)
    assert read_into[0] >= size - fed[0]


def test_receive_buffers_are_reused_from_body_to_body(server, make_data, tmp_path, monkeypatch):
    """A new body takes buffers other bodies gave back: fresh memory page-faults on every page."""
    allocated: list[int] = []
    pool = receiver.BufferPool()
    original = pool.take

    def counting(size: int) -> bytearray:
        before = sum(len(v) for v in pool._free.values())
        buffer = original(size)
        if sum(len(v) for v in pool._free.values()) == before:
            allocated.append(size)
        return buffer
    pool.take = counting  # type: ignore[method-assign]
    monkeypatch.setattr(receiver, "POOL", pool)
    for i in range(6):
        server.add(f"/r{i}", make_data(3 * MiB, seed=i))
        dlman.download(server.url(f"/r{i}"), tmp_path / f"r{i}", connections=1)
    # the first body allocates its two buffers; the five after it reuse them
    assert len(allocated) == 2, allocated


def test_small_files_reuse_one_connection(server, make_data, tmp_path):
    for i in range(5):
        server.add(f"/s{i}", make_data(100_000, seed=i))

    async def main() -> None:
        async with dlman.Engine() as engine:
            for i in range(5):
                await engine.download(server.url(f"/s{i}"), tmp_path / f"s{i}")
    import asyncio
    asyncio.run(main())
    assert server.total_connections == 1
