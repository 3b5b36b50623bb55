"""Proof that every FaultServer knob does what it says, so dlman's tests can trust it.

Uses httpx's sync client against the real server; the whole module runs in a few seconds.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from faultserver import FaultServer, Resource

IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A client that asks for the bytes as served, as dlman does."""
    with httpx.Client(headers=IDENTITY, timeout=5) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_server_bugs(server: FaultServer, server2: FaultServer) -> Iterator[None]:
    """A knob test that passes while the server logged an internal error proves nothing."""
    yield
    assert server.errors == [] and server2.errors == []


def fetch_partial(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes, Exception | None]:
    """GET ``url`` keeping whatever arrived before the transfer broke, and the error."""
    got = bytearray()
    with client.stream("GET", url, headers=headers) as resp:
        try:
            for chunk in resp.iter_raw():
                got += chunk
        except (httpx.TransportError, httpx.DecodingError) as exc:
            return resp, bytes(got), exc
    return resp, bytes(got), None


def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# --- basics ---------------------------------------------------------------------------------


def test_get_head_404_and_urls(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(100_000)
    res = server.add("/f.bin", data)
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.url("/f.bin") == server.base_url + "/f.bin"
    assert server.resource("/f.bin") is res

    r = client.get(server.url("/f.bin"))
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["accept-ranges"] == "bytes"
    assert "etag" not in r.headers and "content-encoding" not in r.headers

    h = client.head(server.url("/f.bin"))
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == str(len(data))

    assert client.get(server.url("/missing")).status_code == 404
    assert client.head(server.url("/missing")).status_code == 404
    assert client.get(server.url("/f.bin?x=1")).content == data  # query strings are ignored
    assert client.post(server.url("/f.bin"), content=b"x").status_code == 405
    assert make_data(1000, seed=3) == make_data(1000, seed=3) != make_data(1000, seed=4)


def test_keep_alive_reuses_one_connection(server: FaultServer, client: httpx.Client) -> None:
    server.add("/a", b"x" * 5000)
    server.add("/s", b"y", statuses=[503, 304, (204, {"X-A": "1"})], chunked=True)
    for _ in range(5):
        assert client.get(server.url("/a")).content == b"x" * 5000
    # Every kind of response must be framed right, or the next one on the connection breaks.
    assert client.head(server.url("/a")).status_code == 200
    assert client.head(server.url("/nope")).status_code == 404
    assert client.get(server.url("/nope")).status_code == 404
    assert client.get(server.url("/a"), headers={"Range": "bytes=9999-"}).status_code == 416
    assert [client.get(server.url("/s")).status_code for _ in range(4)] == [503, 304, 204, 200]
    assert client.get(server.url("/s")).content == b"y"
    assert client.get(server.url("/a")).content == b"x" * 5000
    assert server.total_connections == 1


def test_request_records(server: FaultServer, client: httpx.Client) -> None:
    date = "Mon, 01 Jan 2024 00:00:00 GMT"
    res = server.add("/a", b"0123456789", headers={"X-Extra": "yes"}, last_modified=date)
    r = client.get(server.url("/a"), headers={"Range": "bytes=2-4", "X-Test": "1"})
    assert r.headers["x-extra"] == "yes"
    assert r.headers["last-modified"] == date
    client.head(server.url("/a"))
    first, second = res.requests
    assert (first.method, first.path, first.range, first.status) == ("GET", "/a", "bytes=2-4", 206)
    assert first.headers["X-TEST"] == "1" and first.headers.get("x-test") == "1"
    assert "Range" in first.headers and "range" in first.headers
    assert (second.method, second.range, second.status) == ("HEAD", None, 200)
    assert [rec.path for rec in server.requests] == ["/a", "/a"]


# --- ranges ---------------------------------------------------------------------------------


def test_range_forms_and_416(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(1000)
    server.add("/f", data)
    url = server.url("/f")
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=900-": (900, 999),
        "bytes=-10": (990, 999),
        "bytes=990-5000": (990, 999),
        "bytes=-5000": (0, 999),
    }
    for value, (a, b) in cases.items():
        r = client.get(url, headers={"Range": value})
        assert r.status_code == 206, value
        assert r.headers["content-range"] == f"bytes {a}-{b}/1000"
        assert r.headers["content-length"] == str(b - a + 1)
        assert r.content == data[a : b + 1]

    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */1000"
    assert client.get(url, headers={"Range": "bytes=" + "9" * 5000 + "-"}).status_code == 416
    r = client.get(url, headers={"Range": "bytes=10-" + "9" * 5000})
    assert r.status_code == 206 and r.headers["content-range"] == "bytes 10-999/1000"
    # Multi-range and malformed ranges fall back to the whole body.
    for value in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1"):
        r = client.get(url, headers={"Range": value})
        assert r.status_code == 200 and r.content == data, value


def test_if_range_etag_and_date(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(1000)
    date = "Tue, 02 Jan 2024 03:04:05 GMT"
    res = server.add("/f", data, etag='"v1"', last_modified=date)
    url = server.url("/f")

    def get(if_range: str) -> httpx.Response:
        return client.get(url, headers={"Range": "bytes=10-", "If-Range": if_range})

    assert get('"v1"').status_code == 206
    assert get('"v2"').status_code == 200
    assert get(date).status_code == 206
    assert get("Tue, 02 Jan 2024 03:04:06 GMT").status_code == 200
    assert get("garbage").status_code == 200

    res.weak_etag = True
    assert client.get(url).headers["etag"] == 'W/"v1"'
    assert get('"v1"').status_code == 200  # weak validators never satisfy If-Range
    assert get('W/"v1"').status_code == 200


def test_auto_etag_follows_data(server: FaultServer, client: httpx.Client, make_data) -> None:
    res = server.add("/f", make_data(1000), auto_etag=True)
    url = server.url("/f")
    tag1 = client.head(url).headers["etag"]
    assert tag1.startswith('"') and not tag1.startswith("W/")
    assert client.get(url, headers={"Range": "bytes=5-", "If-Range": tag1}).status_code == 206
    res.data = make_data(1000, seed=1)  # same size, new content
    tag2 = client.head(url).headers["etag"]
    assert tag2 != tag1
    r = client.get(url, headers={"Range": "bytes=5-", "If-Range": tag1})
    assert r.status_code == 200 and r.content == res.data


def test_accept_ranges_false_and_ignore_range_after(
    server: FaultServer, client: httpx.Client
) -> None:
    data = bytes(range(256)) * 4
    server.add("/no", data, accept_ranges=False)
    r = client.get(server.url("/no"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200 and r.content == data and "accept-ranges" not in r.headers

    server.add("/later", data, ignore_range_after=2)
    ranged = {"Range": "bytes=0-9"}
    statuses = [client.get(server.url("/later"), headers=ranged).status_code for _ in range(4)]
    assert statuses == [206, 206, 200, 200]
    assert client.get(server.url("/later")).status_code == 200


def test_short_206_and_wrong_content_range(
    server: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(1000)
    server.add("/short", data, short_206=100)
    r = client.get(server.url("/short"), headers={"Range": "bytes=200-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == "bytes 200-299/1000"
    assert r.content == data[200:300]

    server.add("/start", data, wrong_content_range="start")
    r = client.get(server.url("/start"), headers={"Range": "bytes=200-299"})
    assert r.headers["content-range"] == "bytes 201-299/1000"
    assert r.content == data[200:300]  # body still from the true start

    server.add("/total", data, wrong_content_range="total")
    r = client.get(server.url("/total"), headers={"Range": "bytes=200-299"})
    assert r.headers["content-range"] == "bytes 200-299/1001"
    assert r.content == data[200:300]


# --- throttling -----------------------------------------------------------------------------


def test_throttle_is_per_connection(server: FaultServer, make_data) -> None:
    size, rate = 256 * 1024, 512 * 1024  # ~0.5 s per response
    data = make_data(size)
    res = server.add("/slow", data, throttle=rate)

    def fetch(_: int) -> bytes:
        with httpx.Client(headers=IDENTITY, timeout=5) as c:
            return c.get(server.url("/slow")).content

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(fetch, range(4)))
    elapsed = time.monotonic() - t0
    assert all(b == data for b in bodies)
    # Four at once take as long as one: the limit is per connection.
    assert 0.4 < elapsed < 1.5, elapsed
    assert res.max_active == 4
    assert res.bytes_served == 4 * size


def test_first_range_throttle(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(128 * 1024)
    server.add("/f", data, first_range_throttle=128 * 1024)
    t0 = time.monotonic()
    r = client.get(server.url("/f"), headers={"Range": "bytes=65536-"})
    fast = time.monotonic() - t0
    t0 = time.monotonic()
    r0 = client.get(server.url("/f"), headers={"Range": "bytes=0-65535"})
    slow = time.monotonic() - t0
    assert r.content == data[65536:] and r0.content == data[:65536]
    assert 0.4 < slow < 1.5 and fast < slow / 3, (fast, slow)


def test_throttle_can_be_lifted_mid_body(
    server: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(1 << 20)
    res = server.add("/f", data, throttle=64 * 1024)  # would take 16 s
    threading.Timer(0.3, lambda: setattr(res, "throttle", None)).start()
    t0 = time.monotonic()
    assert client.get(server.url("/f")).content == data
    assert time.monotonic() - t0 < 2


# --- cuts and stalls ------------------------------------------------------------------------


def test_drop_after(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(300_000)
    res = server.add("/f", data, drop_after=100_000)
    resp, got, exc = fetch_partial(client, server.url("/f"))
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert got == data[:100_000]
    assert res.bytes_served == 100_000
    # Each response is cut after drop_after bytes of *its* body.
    resp, got, exc = fetch_partial(client, server.url("/f"), {"Range": "bytes=100000-"})
    assert resp.status_code == 206 and exc is not None and got == data[100_000:200_000]
    # A body no longer than drop_after is sent whole.
    tail = client.get(server.url("/f"), headers={"Range": "bytes=250000-"})
    assert tail.content == data[250_000:]

    server.add("/once", data, drop_after=1000, drop_after_once=True)
    _, got, exc = fetch_partial(client, server.url("/once"))
    assert exc is not None and len(got) == 1000
    assert client.get(server.url("/once")).content == data


def test_short_body(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(50_000)
    res = server.add("/f", data, short_body=20_000)
    resp, got, exc = fetch_partial(client, server.url("/f"))
    assert resp.headers["content-length"] == "50000"
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert got == data[:20_000] and res.bytes_served == 20_000


def test_drop_probability_is_seeded(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(1 << 20)
    res = server.add("/f", data, drop_probability=0.1, seed=7)
    _, got1, exc1 = fetch_partial(client, server.url("/f"))
    res.reset_counters()
    _, got2, exc2 = fetch_partial(client, server.url("/f"))
    assert exc1 is not None and exc2 is not None
    assert 0 < len(got1) < len(data) and got1 == got2 == data[: len(got1)]
    assert len(got1) % (16 * 1024) == 0


def test_stall_fires_client_read_timeout(server: FaultServer, make_data) -> None:
    data = make_data(100_000)
    res = server.add("/f", data, stall_after=30_000, stall_after_once=True)
    got = bytearray()
    with httpx.Client(headers=IDENTITY, timeout=httpx.Timeout(5, read=0.4)) as c:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("GET", server.url("/f")) as r:
                for chunk in r.iter_raw():
                    got += chunk
        assert 0.3 < time.monotonic() - t0 < 2
        assert bytes(got) == data[:30_000]
        assert c.get(server.url("/f")).content == data  # once: the next response is whole
    assert wait_until(lambda: res.active == 0)


def test_stop_with_stalled_connection_is_prompt(make_data) -> None:
    srv = FaultServer().start()
    srv.add("/f", make_data(100_000), stall_after=10)
    errors: list[BaseException] = []
    started = threading.Event()

    def stalled_client() -> None:
        try:
            with httpx.Client(headers=IDENTITY, timeout=30) as c:
                with c.stream("GET", srv.url("/f")) as r:
                    started.set()
                    r.read()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=stalled_client)
    thread.start()
    assert started.wait(5)
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2
    thread.join(5)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url("/f"), timeout=2)
    srv.stop()  # idempotent
    assert srv.errors == []


def test_restart_on_same_port(make_data) -> None:
    data = make_data(10_000)
    with FaultServer() as srv:
        srv.add("/f", data)
        url = srv.url("/f")
        assert httpx.get(url).content == data
        srv.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)
        srv.start()
        assert srv.url("/f") == url and httpx.get(url).content == data


def test_client_disconnect_mid_body_is_harmless(
    server: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(4 << 20)
    res = server.add("/f", data, throttle=1 << 20)
    with client.stream("GET", server.url("/f")) as r:
        next(r.iter_raw())
    # The client hung up after one chunk: the server notices, stops counting, and goes on.
    assert wait_until(lambda: res.active == 0)
    assert res.bytes_served < len(data) // 2
    res.throttle = None
    assert client.get(server.url("/f")).content == data
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.recv(1000)
    sock.close()  # mid-body, unthrottled
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GARBAGE\r\n\r\n")
    assert sock.recv(1000).startswith(b"HTTP/1.1 400")
    sock.close()
    assert client.get(server.url("/f")).status_code == 200


def test_many_clients_vanishing_mid_body(
    server: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(2 << 20)
    res = server.add("/f", data, throttle=8 << 20)

    def rude_client(i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1000 * (i + 1))
        if i % 2:  # half of them reset instead of closing
            linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        sock.close()

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(rude_client, range(32)))
    assert wait_until(lambda: res.active == 0)
    assert res.max_active >= 2 and res.bytes_served < len(data) * 8
    res.throttle = None
    assert client.get(server.url("/f")).content == data


# --- statuses, encodings, framing, headers, redirects ------------------------------------


def test_statuses_script_then_normal(server: FaultServer, client: httpx.Client) -> None:
    res = server.add("/f", b"payload", statuses=[503, (429, {"Retry-After": "1"})])
    r1 = client.get(server.url("/f"))
    r2 = client.get(server.url("/f"))
    r3 = client.get(server.url("/f"))
    assert r1.status_code == 503 and r1.text.startswith("503")
    assert r2.status_code == 429 and r2.headers["retry-after"] == "1"
    assert r3.status_code == 200 and r3.content == b"payload"
    assert [rec.status for rec in res.requests] == [503, 429, 200]
    assert res.bytes_served == len(b"payload")  # error texts are not the resource's bytes

    res.status = 403
    assert client.get(server.url("/f")).status_code == 403
    assert client.get(server.url("/f")).status_code == 403
    res.status = None
    assert client.get(server.url("/f")).status_code == 200


def test_gzip_only_when_asked(server: FaultServer, client: httpx.Client) -> None:
    data = b"compressible " * 10_000
    server.add("/z", data, gzip=True, auto_etag=True)
    plain = client.get(server.url("/z"))
    assert "content-encoding" not in plain.headers and plain.content == data

    with httpx.Client(headers={"Accept-Encoding": "gzip"}) as gz_client:
        packed = gz_client.get(server.url("/z"))
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == data  # httpx decoded it
        assert packed.headers["etag"] != plain.headers["etag"]
        raw_len = int(packed.headers["content-length"])
        assert raw_len < len(data) // 10
        with gz_client.stream("GET", server.url("/z"), headers={"Range": "bytes=0-9"}) as r:
            assert r.headers["content-range"] == f"bytes 0-9/{raw_len}"  # compressed size
    with httpx.Client(headers={"Accept-Encoding": "gzip;q=0, identity"}) as no_gz:
        assert "content-encoding" not in no_gz.get(server.url("/z")).headers

    server.add("/hostile", data, gzip_always=True)
    with client.stream("GET", server.url("/hostile")) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert gzip.decompress(b"".join(r.iter_raw())) == data


def test_gzip_range_bytes_are_compressed_bytes(server: FaultServer) -> None:
    data = b"abc" * 5000
    server.add("/z", data, gzip=True)
    with httpx.Client(headers={"Accept-Encoding": "gzip"}) as c:
        with c.stream("GET", server.url("/z")) as r:
            whole = b"".join(r.iter_raw())
        with c.stream("GET", server.url("/z"), headers={"Range": "bytes=0-9"}) as r:
            assert r.status_code == 206
            first10 = b"".join(r.iter_raw())
    assert first10 == whole[:10] and first10[:2] == b"\x1f\x8b"
    assert gzip.decompress(whole) == data


def test_no_content_length_is_close_delimited(
    server: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(200_000)
    server.add("/f", data, no_content_length=True)
    r = client.get(server.url("/f"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200 and r.content == data
    assert "content-length" not in r.headers and "accept-ranges" not in r.headers
    assert r.headers["connection"] == "close"
    client.get(server.url("/f"))
    assert server.total_connections == 2  # the connection did not survive the body


def test_chunked(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(300_000)
    server.add("/f", data, chunked=True)
    r = client.get(server.url("/f"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200 and r.content == data
    assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
    assert client.get(server.url("/f")).content == data
    assert server.total_connections == 1  # chunked keeps the connection alive


def test_content_disposition_and_delay(server: FaultServer, client: httpx.Client) -> None:
    cd = "attachment; filename=\"a b.txt\"; filename*=UTF-8''%C3%A9.txt"
    server.add("/f", b"x", content_disposition=cd, response_delay=0.3)
    t0 = time.monotonic()
    r = client.get(server.url("/f"))
    assert time.monotonic() - t0 >= 0.3
    assert r.headers["content-disposition"] == cd


def test_redirect_to_second_server(
    server: FaultServer, server2: FaultServer, client: httpx.Client, make_data
) -> None:
    data = make_data(10_000)
    server.add("/start", redirect_to=server2.url("/real.bin"))
    target = server2.add("/real.bin", data)
    assert server.base_url != server2.base_url
    r = client.get(server.url("/start"), follow_redirects=True, headers={"Range": "bytes=0-99"})
    assert [h.status_code for h in r.history] == [302]
    assert r.status_code == 206 and r.content == data[:100]
    assert target.requests[0].range == "bytes=0-99"

    server.add("/perm", redirect_to=server2.url("/real.bin"), redirect_status=301)
    r = client.get(server.url("/perm"))
    assert r.status_code == 301 and r.headers["location"] == server2.url("/real.bin")


# --- counters and concurrency ---------------------------------------------------------------


def test_counters_and_reset(server: FaultServer, client: httpx.Client, make_data) -> None:
    data = make_data(10_000)
    res = server.add("/f", data, drop_after=100, drop_after_once=True)
    fetch_partial(client, server.url("/f"))
    client.get(server.url("/f"))
    client.get(server.url("/f"), headers={"Range": "bytes=5000-"})
    client.head(server.url("/f"))
    assert res.bytes_served == 100 + 10_000 + 5_000
    assert len(res.requests) == 4 and res.active == 0 and res.max_active == 1
    res.reset_counters()
    assert res.bytes_served == 0 and res.requests == [] and res.max_active == 0
    _, got, exc = fetch_partial(client, server.url("/f"))  # the once-knob is armed again
    assert exc is not None and len(got) == 100


def test_64_concurrent_connections(server: FaultServer, make_data) -> None:
    data = make_data(64 * 1024)
    res = server.add("/f", data, throttle=4096)  # slow enough that all 64 overlap...
    limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
    with httpx.Client(headers=IDENTITY, timeout=20, limits=limits) as c:
        with ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(lambda: c.get(server.url("/f")).content) for _ in range(64)]
            assert wait_until(lambda: res.active == 64, timeout=10)
            res.throttle = None  # ...then all finish at once
            bodies = [f.result() for f in futures]
    assert all(b == data for b in bodies)
    assert res.max_active == 64 and server.total_connections == 64
    assert res.bytes_served == 64 * len(data)


def test_https(make_data, tmp_path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    data = make_data(200_000)
    with FaultServer(ssl_context=server_ctx) as srv:
        srv.add("/f", data, drop_after=50_000, drop_after_once=True)
        assert srv.base_url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=client_ctx, headers=IDENTITY) as c:
            _, got, exc = fetch_partial(c, srv.url("/f"))
            assert exc is not None and got == data[:50_000]
            r = c.get(srv.url("/f"), headers={"Range": "bytes=50000-"})
            assert r.status_code == 206 and r.content == data[50_000:]
        with httpx.Client(headers=IDENTITY) as untrusting:  # failed handshakes must not hurt
            with pytest.raises(httpx.ConnectError):
                untrusting.get(srv.url("/f"))
        with httpx.Client(verify=client_ctx, headers=IDENTITY) as c:
            assert c.get(srv.url("/f")).content == data
        assert srv.errors == []


def test_add_rejects_unknown_knobs_and_repr_is_short(server: FaultServer) -> None:
    with pytest.raises(TypeError):
        server.add("/f", b"", no_such_knob=True)
    res = server.add("/f", b"x" * 100_000, throttle=10)
    assert isinstance(res, Resource)
    assert repr(res).startswith("Resource('/f', 100000 bytes, throttle=10,")
    assert len(repr(res)) < 200
