"""Guards on the hot path that need no clock: how the bytes reach the disk.

Throughput is measured by scripts/bench.py; these tests only pin the mechanisms that
keep it: large positioned writes (never one thread hop per network chunk) and
connections reused when a body ends exactly where its segment does.
"""

from __future__ import annotations

import pytest

import dlman
from dlman import storage

MiB = 1 << 20


@pytest.fixture
def write_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = storage.PartFile.write

    async def counting(self: storage.PartFile, offset: int, chunks: list[bytes]) -> None:
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
