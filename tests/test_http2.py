"""Segmented downloads over HTTP/2: one connection, many streams, and the streams cut short.

dlman cuts streams on purpose: the first request (``Range: bytes=0-``) is closed at the end of
its segment, and takeovers shorten segments in flight. Over HTTP/2 every cut stream must be
reset (RST_STREAM), and the flow-control window its unread DATA held must come back; otherwise
the server keeps sending into the shared connection window until it is gone, and every other
stream on the connection waits for the engine's timeout. The server is tests/h2server.py: h2
and HTTP/1.1 over TLS on one port, picked by ALPN, trusted through SSL_CERT_FILE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import httpx
import trustme

import dlman
from faultserver import make_data
from h2server import H2Request, H2Resource, H2Server

MiB = 1 << 20
BIG = 64 * MiB


@pytest.fixture(scope="module")
def big() -> bytes:
    return make_data(BIG, seed=7)


@pytest.fixture
def h2_server(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[H2Server]:
    """A started H2Server whose CA the client trusts (SSL_CERT_FILE), with no proxy set, so
    dlman uses its own transport as it does by default."""
    with H2Server(ca=ca) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.write_ca(tmp_path / "ca.pem")))
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield server
        assert server.errors == []


def cut_streams_were_reset(res: H2Resource) -> list[str]:
    """Every stream the server stopped sending before its end was stopped by an RST_STREAM
    from the client (nothing else stops one while the connection lives)."""
    return [f"stream {r.stream_id} {r.range}: sent {r.sent} of {r.length}, {r.resets} resets"
            for r in res.requests if r.sent < r.length and not r.stopped]


def span(record: H2Request, size: int) -> tuple[int, int]:
    """The bytes ``[first, end)`` a request asked for (a single range, or the whole file)."""
    if record.range is None:
        return 0, size
    first, _, last = record.range.removeprefix("bytes=").partition("-")
    return int(first), int(last) + 1 if last else size


@pytest.mark.timeout(60)
def test_segmented_h2_download_resets_the_streams_it_cuts(h2_server: H2Server, big: bytes,
                                                          tmp_path: Path) -> None:
    res = h2_server.add("/big.bin", big)
    dest = tmp_path / "big.bin"
    dlman.download(h2_server.url("/big.bin"), dest, connections=8, http2=True, timeout=5)
    assert dest.read_bytes() == big
    assert res.protocols == {"h2"} and h2_server.connections == ["h2"]
    streams = {r.stream_id for r in res.requests}
    assert len(streams) >= 8, res.requests
    first = res.requests[0]
    assert first.range == "bytes=0-" and first.resets >= 1 and first.stopped, first
    assert first.sent < first.length  # the server stopped: it did not send the rest of the file
    assert cut_streams_were_reset(res) == []


@pytest.mark.timeout(60)
def test_h2_download_never_waits_for_a_timeout(h2_server: H2Server, big: bytes,
                                               tmp_path: Path) -> None:
    """Against a server that sends concurrent responses one at a time (RFC 9218's default),
    the first, cut stream would take the whole connection window at once: without resets
    every other stream would wait 30 s for the engine's timeout, over and over."""
    h2_server.sequential = True
    res = h2_server.add("/big.bin", big)
    dest = tmp_path / "big.bin"

    async def main() -> None:
        async with dlman.Engine(connections=8, http2=True, timeout=30) as engine:
            await asyncio.wait_for(engine.download(h2_server.url("/big.bin"), dest), 20)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 20
    assert dest.read_bytes() == big
    assert h2_server.connections == ["h2"]  # no timeout, so no second connection
    assert res.requests[0].stopped
    assert cut_streams_were_reset(res) == []


def test_http11_over_alpn_on_the_same_server(h2_server: H2Server, big: bytes,
                                             tmp_path: Path) -> None:
    data = big[:16 * MiB]
    res = h2_server.add("/file.bin", data)
    dest = tmp_path / "file.bin"
    dlman.download(h2_server.url("/file.bin"), dest, connections=4, http2=False, timeout=5)
    assert dest.read_bytes() == data
    assert res.protocols == {"http/1.1"}
    assert set(h2_server.connections) == {"http/1.1"} and len(h2_server.connections) >= 4
    assert res.resets_received == 0


def test_h2_range_answered_with_200_keeps_the_file_intact(h2_server: H2Server, big: bytes,
                                                          tmp_path: Path) -> None:
    data = big[:8 * MiB]
    res = h2_server.add("/file.bin", data, ignore_range=True)
    dest = tmp_path / "file.bin"
    dlman.download(h2_server.url("/file.bin"), dest, connections=8, http2=True, timeout=5)
    assert dest.read_bytes() == data
    assert res.protocols == {"h2"} and res.requests[0].status == 200


def test_h2_stream_dropped_by_the_server_is_retried(h2_server: H2Server, big: bytes,
                                                    tmp_path: Path) -> None:
    data = big[:16 * MiB]
    res = h2_server.add("/file.bin", data, reset_after=MiB)  # RST_STREAM after 1 MiB, once
    dest = tmp_path / "file.bin"
    dlman.download(h2_server.url("/file.bin"), dest, connections=4, http2=True, timeout=5)
    assert dest.read_bytes() == data
    dropped = res.requests[0]
    assert dropped.sent == MiB < dropped.length
    # The byte after the drop came from a later request, over h2 as well.
    assert any(span(r, len(data))[0] <= MiB < span(r, len(data))[1] for r in res.requests[1:])
    assert res.protocols == {"h2"}


def test_data_queued_for_a_stream_is_handed_over_a_buffer_at_a_time(h2_server: H2Server, big: bytes) -> None:
    """Reading one stream pulls in the DATA of the others on the connection, up to its 16 MiB
    window. Handed over as one joined chunk, that was a fresh allocation of megabytes at a time:
    1 GiB over h2 with 16 streams peaked at 118-129 MiB, against 75-77 MiB a buffer at a time."""
    from dlman.transport import HIGH_WATER, make_transport

    h2_server.add("/a.bin", big[:8 * MiB])
    h2_server.add("/b.bin", big[8 * MiB:16 * MiB])

    async def main() -> list[int]:
        transport = make_transport(http2=True, limits=httpx.Limits(max_connections=1))
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            async with client.stream("GET", h2_server.url("/a.bin")) as a, \
                    client.stream("GET", h2_server.url("/b.bin")) as b:
                assert a.http_version == b.http_version == "HTTP/2"
                async for _ in b.aiter_raw():  # b to its end: a's DATA queues up meanwhile
                    pass
                sizes = [len(chunk) async for chunk in a.aiter_raw()]
        assert sum(sizes) == 8 * MiB
        return sizes

    sizes = asyncio.run(main())
    assert max(sizes) <= HIGH_WATER + (16 << 10), max(sizes)  # at most one frame past a buffer's worth
