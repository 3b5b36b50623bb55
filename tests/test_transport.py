"""Tests for dlman.transport: the asyncio network backend must move the same bytes as
httpx's default one and fail with the same httpx exceptions, or dlman's retries break.

Servers are tiny blocking socket servers in threads on 127.0.0.1, started here, so the
tests depend on nothing but httpx, h2 and trustme; the HTTP/2 flow-control tests use the
h2 server of tests/h2server.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import struct
import threading
import time
import typing

import httpx
import pytest

from dlman import transport as tr
from h2server import H2Server
from helpers import wait_for

DATA = random.Random(20240601).randbytes(8 * 1024 * 1024)
BIG = DATA * 4  # 32 MiB for the back-pressure test
LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=5)

Handler = typing.Callable[[socket.socket, "Server"], None]


class Server:
    """Accepts connections in a thread and runs ``handler(conn, server)`` in one per conn."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            self.handler(conn, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def read_request(conn: socket.socket, pending: bytearray) -> str | None:
    """Read one request head from ``conn``; return its path, or None at EOF."""
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    pending[:] = rest
    return head.split(b" ", 2)[1].decode()


def send_head(conn: socket.socket, headers: dict[str, str], status: str = "200 OK") -> None:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def http_handler(conn: socket.socket, server: Server) -> None:
    """Keep-alive HTTP/1.1 server; the path picks the behaviour under test."""
    pending = bytearray()
    while True:
        path = read_request(conn, pending)
        if path is None:
            return
        name, _, arg = path.strip("/").partition("/")
        if name == "bytes":  # /bytes/N: the first N bytes of DATA (or BIG)
            body = (BIG if int(arg) > len(DATA) else DATA)[: int(arg)]
            send_head(conn, {"Content-Length": str(len(body))})
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                conn.sendall(view[start : start + (1 << 20)])
        elif name == "chunked":  # DATA in chunks of irregular sizes
            send_head(conn, {"Transfer-Encoding": "chunked"})
            rng, pos = random.Random(7), 0
            while pos < len(DATA):
                piece = DATA[pos : pos + rng.randint(1, 50_000)]
                pos += len(piece)
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.sendall(b"0\r\n\r\n")
        elif name == "eof":  # no length, no chunking: the body ends when the server closes
            send_head(conn, {"Connection": "close"})
            conn.sendall(DATA)
            return
        elif name == "once":  # answers, then closes the idle keep-alive connection
            send_head(conn, {"Content-Length": "5"})
            conn.sendall(b"hello")
            return
        elif name == "stall":  # head and some body, then silence
            send_head(conn, {"Content-Length": str(len(DATA))})
            conn.sendall(DATA[:1000])
            server.stop.wait(10)
            return
        elif name in ("cut", "reset"):  # promises all of DATA, sends part, then FIN / RST
            send_head(conn, {"Content-Length": str(len(DATA))})
            conn.sendall(DATA[: 300_000 + 7])
            time.sleep(0.05)
            if name == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        else:
            send_head(conn, {"Content-Length": "0"}, "404 Not Found")


@pytest.fixture()
def server() -> typing.Iterator[Server]:
    srv = Server(http_handler)
    yield srv
    srv.close()


def server_tls_context(ca: typing.Any, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


def client_tls_context(ca: typing.Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def client(**kwargs: typing.Any) -> httpx.AsyncClient:
    timeout = kwargs.pop("timeout", 5.0)
    kwargs.setdefault("limits", LIMITS)
    kwargs.setdefault("trust_env", False)
    return httpx.AsyncClient(transport=tr.make_transport(**kwargs), timeout=timeout)


async def fetch(c: httpx.AsyncClient, url: str) -> bytes:
    async with c.stream("GET", url) as response:
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_raw()])


def test_available_and_transport_type() -> None:
    assert tr.native_backend_available()
    transport = tr.make_transport(limits=LIMITS)
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert isinstance(transport._pool._network_backend, tr.AsyncioBackend)  # type: ignore[attr-defined]


@pytest.mark.parametrize("path, expected", [
    ("/bytes/65536", DATA[:65536]),
    ("/bytes/8388608", DATA),
    ("/chunked", DATA),
    ("/eof", DATA),
])
def test_http11_bodies_identical(server: Server, path: str, expected: bytes) -> None:
    async def main() -> bytes:
        async with client() as c:
            return await fetch(c, server.url(path))

    body = asyncio.run(main())
    assert len(body) == len(expected) and body == expected


def test_keepalive_reuses_one_connection(server: Server) -> None:
    async def main() -> None:
        async with client() as c:
            assert await fetch(c, server.url("/bytes/1000")) == DATA[:1000]
            assert await fetch(c, server.url("/bytes/2000")) == DATA[:2000]

    asyncio.run(main())
    assert server.connections == 1


def test_idle_connection_closed_by_server_is_not_reused(server: Server) -> None:
    """is_readable lets the pool notice the server hung up on an idle connection."""
    async def main() -> None:
        async with client() as c:
            assert await fetch(c, server.url("/once")) == b"hello"
            await asyncio.sleep(0.2)
            assert await fetch(c, server.url("/once")) == b"hello"

    asyncio.run(main())
    assert server.connections == 2


def test_read_timeout(server: Server) -> None:
    async def main() -> bytes:
        got = bytearray()
        async with client(timeout=httpx.Timeout(5.0, read=0.3)) as c:
            async with c.stream("GET", server.url("/stall")) as response:
                async for chunk in response.aiter_raw():
                    got += chunk
        return bytes(got)

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())
    assert time.monotonic() - started < 3


def test_connect_to_closed_port() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main() -> None:
        async with client() as c:
            await c.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(main())


@pytest.mark.parametrize("path", ["/cut", "/reset"])
def test_cut_mid_body_keeps_the_prefix(server: Server, path: str) -> None:
    got = bytearray()

    async def main() -> None:
        async with client() as c:
            async with c.stream("GET", server.url(path)) as response:
                async for chunk in response.aiter_raw():
                    got.extend(chunk)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        asyncio.run(main())
    assert 0 < len(got) < len(DATA)
    assert bytes(got) == DATA[: len(got)]
    if path == "/cut":  # an orderly FIN delivers everything sent before it
        assert len(got) == 300_007


# --- the fast body path: BodyReader.readinto ----------------------------------------------

async def read_fast(c: httpx.AsyncClient, url: str, size: int = 100_000) -> tuple[bytes, int, int]:
    """The body through its BodyReader into one reused buffer of ``size`` bytes, then whatever
    iterating still gives: (body, bytes read into the buffer, reads)."""
    got = bytearray()
    buffer = memoryview(bytearray(size))
    reads = 0
    async with c.stream("GET", url) as response:
        reader = tr.body_reader(response)
        assert reader is not None
        while count := await reader.readinto(buffer):
            got += buffer[:count]
            reads += 1
        read_into = len(got)
        async for chunk in response.aiter_raw():
            got += chunk
    return bytes(got), read_into, reads


@pytest.mark.parametrize("tls", [False, True])
def test_body_reader_reads_the_whole_body_and_the_connection_is_reused(ca: typing.Any, tls: bool) -> None:
    srv = Server(http_handler, server_tls_context(ca, ["http/1.1"]) if tls else None)
    scheme = "https" if tls else "http"

    async def main() -> None:
        async with client(verify=client_tls_context(ca)) as c:
            for _ in range(2):
                body, read_into, reads = await read_fast(c, srv.url("/bytes/8388608", scheme))
                assert body == DATA and read_into == len(DATA)
                assert reads >= len(DATA) // 100_000  # never more than the buffer per read
            assert await fetch(c, srv.url("/bytes/1000", scheme)) == DATA[:1000]

    try:
        asyncio.run(main())
    finally:
        srv.close()
    assert srv.connections == 1


def test_body_reader_only_for_a_body_with_a_length(server: Server) -> None:
    async def main() -> None:
        async with client() as c:
            for path in ("/chunked", "/eof"):
                async with c.stream("GET", server.url(path)) as response:
                    assert tr.body_reader(response) is None
                    assert b"".join([x async for x in response.aiter_raw()]) == DATA
            async with c.stream("GET", server.url("/bytes/1000")) as response:
                await response.aread()  # read already (an event hook may do this)
                assert tr.body_reader(response) is None

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/cut", "/reset"])
def test_body_reader_cut_short_keeps_the_prefix_and_iterating_raises(server: Server, path: str) -> None:
    got = bytearray()

    async def main() -> None:
        async with client() as c:
            async with c.stream("GET", server.url(path)) as response:
                reader = tr.body_reader(response)
                buffer = memoryview(bytearray(1 << 20))
                while count := await reader.readinto(buffer):
                    got.extend(buffer[:count])
                async for chunk in response.aiter_raw():
                    got.extend(chunk)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        asyncio.run(main())
    assert 0 < len(got) < len(DATA) and bytes(got) == DATA[: len(got)]
    if path == "/cut":
        assert len(got) == 300_007


def test_body_reader_read_timeout(server: Server) -> None:
    async def main() -> None:
        async with client(timeout=httpx.Timeout(5.0, read=0.3)) as c:
            async with c.stream("GET", server.url("/stall")) as response:
                reader = tr.body_reader(response)
                buffer = memoryview(bytearray(1 << 20))
                while await reader.readinto(buffer):
                    pass

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("finish", [False, True])
def test_a_response_closed_before_its_end_resets_the_connection(finish: bool) -> None:
    """HTTP/1.1 has no other way to say "stop sending": the server's next send fails at
    once, instead of pushing the rest of the body into a dead socket. A body read to its
    end leaves its connection open for the next request."""
    client_done = threading.Event()
    outcome: list[str] = []

    def handler(conn: socket.socket, srv: Server) -> None:
        read_request(conn, bytearray())
        send_head(conn, {"Content-Length": str(2 * 65536)})
        conn.sendall(DATA[:65536])
        if finish:
            conn.sendall(DATA[65536:131072])
        client_done.wait(5)
        time.sleep(0.1)  # what the client's close sent has arrived
        try:
            conn.sendall(b"more bytes" if finish else DATA[65536:131072])
            outcome.append("sent")
        except OSError as exc:
            outcome.append(type(exc).__name__)

    srv = Server(handler)

    async def main() -> None:
        async with client() as c:
            async with c.stream("GET", srv.url("/")) as response:
                reader = tr.body_reader(response)
                view = memoryview(bytearray(65536))
                got = await reader.readinto(view)
                if finish:
                    while await reader.readinto(view):
                        pass
                    async for _ in response.aiter_raw():
                        pass
                assert got > 0
            client_done.set()
            await asyncio.to_thread(wait_for, lambda: bool(outcome), what="the server's next send")

    try:
        asyncio.run(main())
    finally:
        srv.close()
    assert outcome == (["sent"] if finish else ["ConnectionResetError"])


def test_readinto_lands_in_the_callers_buffer_when_nothing_is_buffered() -> None:
    """While a reader waits, asyncio reads straight into its buffer (no copy, no bytes)."""
    protocol, transport = new_protocol()
    mine = memoryview(bytearray(1000))
    protocol.sink(mine)
    region = protocol.get_buffer(-1)
    region[:300] = DATA[:300]
    protocol.buffer_updated(300)
    assert protocol.unread == 0 and protocol.unsink() == 300 and bytes(mine[:300]) == DATA[:300]
    # with bytes buffered already, they come first: the sink is not used
    protocol.get_buffer(-1)[:5] = b"first"
    protocol.buffer_updated(5)
    protocol.sink(mine)
    assert len(protocol.get_buffer(-1)) >= tr.MIN_FREE and protocol._into_sink is False
    protocol.unsink()
    assert protocol.take_into(mine) == 5 and bytes(mine[:5]) == b"first"


def test_stream_read_eof_and_is_readable() -> None:
    """Below httpx: data then b"" after the peer closes; is_readable flips on close."""
    release = threading.Event()

    def handler(conn: socket.socket, srv: Server) -> None:
        conn.sendall(b"abc")
        release.wait(5)

    srv = Server(handler)

    async def main() -> None:
        stream = await tr.AsyncioBackend().connect_tcp("127.0.0.1", srv.port, timeout=2)
        assert await stream.read(2, timeout=2) == b"ab"  # never more than asked
        assert await stream.read(65536, timeout=2) == b"c"
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("ssl_object") is None
        assert stream.get_extra_info("server_addr")[1] == srv.port
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        import httpcore

        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(10, timeout=0.05)
        release.set()
        assert await stream.read(10, timeout=2) == b""
        assert stream.get_extra_info("is_readable") is True
        await stream.aclose()
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x")

    try:
        asyncio.run(main())
    finally:
        srv.close()


def test_https_verified_unknown_ca_and_insecure(ca: typing.Any) -> None:
    srv = Server(http_handler, server_tls_context(ca, ["http/1.1"]))

    async def main() -> None:
        async with client(verify=client_tls_context(ca)) as c:
            assert await fetch(c, srv.url("/bytes/8388608", "https")) == DATA
            assert await fetch(c, srv.url("/chunked", "https")) == DATA
        async with client(verify=True) as c:  # certifi's roots: the test CA is unknown
            with pytest.raises(httpx.ConnectError):
                await c.get(srv.url("/bytes/10", "https"))
        async with client(verify=False) as c:
            assert await fetch(c, srv.url("/bytes/65536", "https")) == DATA[:65536]

    try:
        asyncio.run(main())
    finally:
        srv.close()


def test_https_cut_mid_body(ca: typing.Any) -> None:
    srv = Server(http_handler, server_tls_context(ca, ["http/1.1"]))
    got = bytearray()

    async def main() -> None:
        async with client(verify=client_tls_context(ca)) as c:
            async with c.stream("GET", srv.url("/cut", "https")) as response:
                async for chunk in response.aiter_raw():
                    got.extend(chunk)

    try:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            asyncio.run(main())
    finally:
        srv.close()
    assert 0 < len(got) < len(DATA) and bytes(got) == DATA[: len(got)]


def h2_handler(conn: socket.socket, server: Server) -> None:
    """A minimal HTTP/2 server: every request gets the first 40000 bytes of DATA."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import RequestReceived

    assert isinstance(conn, ssl.SSLSocket) and conn.selected_alpn_protocol() == "h2"
    h2c = H2Connection(H2Configuration(client_side=False))
    h2c.initiate_connection()
    conn.sendall(h2c.data_to_send())
    body = DATA[:40000]  # fits the initial 65535-byte flow-control window
    while True:
        data = conn.recv(65536)
        if not data:
            return
        for event in h2c.receive_data(data):
            if isinstance(event, RequestReceived):
                h2c.send_headers(
                    event.stream_id, [(":status", "200"), ("content-length", str(len(body)))]
                )
                for start in range(0, len(body), 16384):
                    last = start + 16384 >= len(body)
                    h2c.send_data(event.stream_id, body[start : start + 16384], end_stream=last)
        conn.sendall(h2c.data_to_send())


def test_http2_over_tls_negotiates_h2(ca: typing.Any) -> None:
    pytest.importorskip("h2")
    srv = Server(h2_handler, server_tls_context(ca, ["h2", "http/1.1"]))

    async def main() -> None:
        async with client(verify=client_tls_context(ca), http2=True) as c:
            for _ in range(2):
                response = await c.get(srv.url("/x", "https"))
                assert response.http_version == "HTTP/2"
                assert response.content == DATA[:40000]

    try:
        asyncio.run(main())
    finally:
        srv.close()
    assert srv.connections == 1


@pytest.mark.parametrize("tls", [False, True])
def test_backpressure_bounds_the_buffer(server: Server, ca: typing.Any, tls: bool) -> None:
    """A slow consumer must not let a fast sender fill memory: the protocol pauses."""
    srv = Server(http_handler, server_tls_context(ca, ["http/1.1"])) if tls else server
    peak = 0
    got = bytearray()

    async def main() -> None:
        nonlocal peak
        kwargs: dict[str, typing.Any] = {"verify": client_tls_context(ca)} if tls else {}
        async with client(**kwargs) as c:
            url = srv.url(f"/bytes/{len(BIG)}", "https" if tls else "http")
            async with c.stream("GET", url) as response:
                stream = response.extensions["network_stream"]
                async for chunk in response.aiter_raw():
                    got.extend(chunk)
                    peak = max(peak, stream.buffered_bytes)
                    await asyncio.sleep(0.0005)

    try:
        asyncio.run(main())
    finally:
        if tls:
            srv.close()
    assert bytes(got) == BIG
    # Paused above HIGH_WATER; at most one more socket read (256 KiB) can land on top.
    assert tr.HIGH_WATER <= peak + 256 * 1024
    assert peak <= tr.HIGH_WATER + 512 * 1024


def test_write_timeout_when_peer_does_not_read() -> None:
    """A peer that never reads fills the buffers; write() waits, then WriteTimeout."""
    import httpcore

    srv = Server(lambda conn, s: s.stop.wait(10))

    async def main() -> None:
        stream = await tr.AsyncioBackend().connect_tcp("127.0.0.1", srv.port, timeout=2)
        try:
            with pytest.raises(httpcore.WriteTimeout):
                await stream.write(b"x" * (64 << 20), timeout=0.2)
        finally:
            await stream.aclose()

    try:
        asyncio.run(main())
    finally:
        srv.close()


def test_tls_handshake_timeout_is_connect_timeout() -> None:
    srv = Server(lambda conn, s: s.stop.wait(10))  # accepts TCP, never speaks TLS

    async def main() -> None:
        async with client(timeout=httpx.Timeout(5.0, connect=0.3)) as c:
            await c.get(srv.url("/", "https"))

    try:
        with pytest.raises(httpx.ConnectTimeout):
            asyncio.run(main())
    finally:
        srv.close()


class FakeTransport:
    """Records pause_reading/resume_reading, as a transport feeding _Protocol would see."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False


def new_protocol() -> tuple[typing.Any, FakeTransport]:
    loop = asyncio.new_event_loop()
    protocol = tr._Protocol(loop)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    loop.close()  # only wait() uses the loop
    return protocol, transport


def test_protocol_is_buffered() -> None:
    """asyncio's transports read into a BufferedProtocol's buffer (no bytes per read)."""
    assert issubclass(tr._Protocol, asyncio.BufferedProtocol)


def test_buffer_stream_integrity_backpressure_and_bounded_size() -> None:
    """Reads of random sizes interleaved with takes of random sizes, as a selector transport
    (recv_into) and asyncio's SSL protocol (fills part of what it is offered) would do:
    every byte comes out once, in order; the buffer never grows while reading is
    honoured; every offered region is big enough for a full read."""
    protocol, transport = new_protocol()
    rng = random.Random(99)
    source = memoryview(BIG)
    sent = 0
    out = bytearray()
    peak = 0
    while len(out) < len(BIG):
        if not transport.paused and sent < len(BIG) and rng.random() < 0.6:
            buf = protocol.get_buffer(rng.choice([-1, 100, 17_000, 300_000]))
            assert len(buf) >= tr.MIN_FREE
            assert len(protocol._buf) == tr.CAPACITY  # compacted, never grown
            count = min(len(buf), rng.randint(1, 300_000), len(BIG) - sent)
            buf[:count] = source[sent : sent + count]
            del buf
            protocol.buffer_updated(count)
            sent += count
            peak = max(peak, protocol.unread)
        elif protocol.unread:
            chunk = protocol.take(rng.choice([1, 1000, 65536, 65536, 1 << 20]))
            assert isinstance(chunk, bytes) and chunk
            out += chunk
            if protocol.unread == 0:
                assert protocol._start == protocol._end == 0
    assert bytes(out) == BIG
    assert transport.pauses > 0 and not transport.paused
    assert tr.HIGH_WATER < peak <= tr.CAPACITY


def test_buffer_grows_for_data_delivered_while_paused() -> None:
    """Python 3.10's SSL layer copies decrypted chunks in even after pause_reading():
    the buffer must take them all (growing), then shrink once drained."""
    from asyncio import protocols

    protocol, transport = new_protocol()
    chunks = [DATA[i : i + 200_000] for i in range(0, 2_000_000, 200_000)]
    for chunk in chunks:
        protocols._feed_data_to_buffered_proto(protocol, chunk)  # type: ignore[attr-defined]
    assert transport.paused and transport.pauses == 1
    assert protocol.unread == 2_000_000 and len(protocol._buf) >= 2_000_000
    got = b"".join(protocol.take(65536) for _ in range(2_000_000 // 65536 + 1))
    assert got == DATA[:2_000_000] and not transport.paused
    assert protocol.unread == 0 and len(protocol._buf) <= tr.CAPACITY
    protocol.data_received(b"tail")  # the fallback path for a loop without get_buffer()
    assert protocol.take(100) == b"tail"


# --- HTTP/2: streams cut short are reset, and their flow-control window comes back --------

H2_WINDOW = 65535 + 2**24  # what httpcore opens for the connection and for each stream
MiB = 1 << 20


def h2_client(server: typing.Any) -> httpx.AsyncClient:
    # A read timeout far shorter than the tests' bound: a stall shows up as ReadTimeout.
    return client(verify=server.client_context(), http2=True,
                  timeout=httpx.Timeout(10.0, read=5.0))


def h2_connection(c: httpx.AsyncClient) -> typing.Any:
    (connection,) = c._transport._pool.connections  # type: ignore[attr-defined]
    return connection._connection


class _Negotiated:
    """A stream as ``_HTTPConnection._speak`` sees it: only its ALPN choice matters."""

    def __init__(self, alpn: str) -> None:
        self.alpn = alpn

    def get_extra_info(self, info: str) -> typing.Any:
        return self if info == "ssl_object" else None

    def selected_alpn_protocol(self) -> str:
        return self.alpn


def test_pool_speaks_through_our_connections_unless_internals_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpcore

    assert tr.cancelling_http2_available() and tr.fast_body_available()
    for http2 in (False, True):
        assert isinstance(tr.make_transport(limits=LIMITS, http2=http2)._pool, tr._Pool)  # type: ignore[attr-defined]
    origin = httpcore.Origin(b"https", b"example.invalid", 443)
    connection = tr._HTTPConnection(origin=origin, http1=True, http2=True)

    def speaks(alpn: str) -> type:
        return type(connection._speak(_Negotiated(alpn)))  # type: ignore[arg-type]

    assert speaks("h2") is tr.CancellingHTTP2Connection
    assert speaks("http/1.1") is tr._FastHTTP11Connection
    monkeypatch.setattr(tr, "cancelling_http2_available", lambda: False)
    assert speaks("h2") is httpcore.AsyncHTTP2Connection
    monkeypatch.setattr(tr, "fast_body_available", lambda: False)
    assert speaks("http/1.1") is httpcore.AsyncHTTP11Connection
    assert type(tr.make_transport(limits=LIMITS, http2=True)._pool) is httpcore.AsyncConnectionPool  # type: ignore[attr-defined]


@pytest.fixture
def clear_checks() -> typing.Iterator[typing.Callable[[], None]]:
    """Forget the cached answers of the internals checks (also after the test)."""
    def clear() -> None:
        for check in (tr.connection_internals_available, tr.cancelling_http2_available,
                      tr.fast_body_available):
            check.cache_clear()
    clear()
    yield clear
    clear()


@pytest.mark.parametrize("check, owner, name", [
    ("cancelling_http2_available", "httpcore.AsyncHTTP2Connection", "_response_closed"),
    ("cancelling_http2_available", "httpcore.AsyncHTTP2Connection", "_receive_stream_event"),
    ("cancelling_http2_available", "httpcore.AsyncHTTP2Connection", "_write_outgoing_data"),
    ("cancelling_http2_available", "httpcore.AsyncHTTPConnection", "_connect"),
    ("cancelling_http2_available", "h2.connection.H2Connection", "reset_stream"),
    ("fast_body_available", "httpcore.AsyncHTTPConnection", "_connect"),
    ("fast_body_available", "h11._receivebuffer.ReceiveBuffer", "maybe_extract_at_most"),
])
def test_our_connections_check_the_internals_they_rely_on(
    monkeypatch: pytest.MonkeyPatch, clear_checks: typing.Callable[[], None], check: str, owner: str,
    name: str,
) -> None:
    import importlib

    module, _, cls = owner.rpartition(".")
    target = getattr(importlib.import_module(module), cls)
    available = getattr(tr, check)
    assert available()
    clear_checks()
    monkeypatch.delattr(target, name)
    assert not available()


def test_http2_response_closed_early_resets_its_stream(ca: typing.Any) -> None:
    """The server must stop sending a stream nobody reads, and the others must not stall."""
    with H2Server(ca=ca) as srv:
        a = srv.add("/a", BIG)
        b = srv.add("/b", DATA * 3)  # 24 MiB: more than the connection window

        async def main() -> None:
            async with h2_client(srv) as c:
                async with c.stream("GET", srv.url("/a")) as response:
                    got = 0
                    async for chunk in response.aiter_raw():
                        got += len(chunk)
                        if got >= MiB:
                            break
                response = await c.get(srv.url("/b"))
                assert response.http_version == "HTTP/2" and response.content == b.data

        asyncio.run(main())
    (cut,) = a.requests
    assert cut.resets >= 1 and cut.stopped and cut.sent < len(BIG)
    assert srv.connections == ["h2"] and srv.errors == []


def test_http2_unread_data_of_a_closed_response_is_given_back(ca: typing.Any) -> None:
    """A response closed with a full connection window of its DATA still queued: unless
    that DATA counts as read, the window never reopens and the next stream starves."""
    with H2Server(ca=ca) as srv:
        srv.sequential = True  # all of /a before any of /b
        srv.add("/a", BIG)
        b = srv.add("/b", DATA[:MiB])

        async def main() -> None:
            async with h2_client(srv) as c:
                first = await c.send(c.build_request("GET", srv.url("/a")), stream=True)
                second = await c.send(c.build_request("GET", srv.url("/b")), stream=True)
                # Reading /b pulls /a's DATA off the socket into /a's queue, unread, until
                # the connection window is spent.
                reading = asyncio.create_task(second.aread())
                state = h2_connection(c)._h2_state
                deadline = time.monotonic() + 4
                while state.inbound_flow_control_window > 0:
                    assert time.monotonic() < deadline, state.inbound_flow_control_window
                    await asyncio.sleep(0.01)
                await first.aclose()
                assert await asyncio.wait_for(reading, 10) == b.data

        asyncio.run(main())
    assert srv.connections == ["h2"] and srv.errors == []


def test_http2_client_speaks_http11_when_alpn_chooses_it(ca: typing.Any) -> None:
    with H2Server(ca=ca, alpn=("http/1.1",)) as srv:
        res = srv.add("/x", DATA)

        async def main() -> None:
            async with h2_client(srv) as c:
                response = await c.get(srv.url("/x"))
                assert response.http_version == "HTTP/1.1" and response.content == DATA

        asyncio.run(main())
    assert res.protocols == {"http/1.1"}
