"""Proof under failure: hostile and broken servers never leave a wrong file (SPEC rules 1, 6, 8, 9).

Each test asserts both the outcome (result or exception) and the bytes on disk. What the fault
server cannot do (framing lies, absurd heads, trickled heads) a tiny raw-socket server does.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dlman
from helpers import fetch

MiB = 1 << 20



def files_under(root: Path) -> list[str]:
    """Every file below ``root``, relative, sorted: where bytes landed."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- a raw-socket server for what HTTP libraries refuse to send ---------------------------------

class RawServer:
    """Accepts connections on 127.0.0.1; ``handler(head, sock)`` writes whatever bytes it likes.

    ``head`` is the request head as bytes; a handler returning True keeps the connection for
    another request. Every connection runs on its own daemon thread.
    """

    def __init__(self, handler: Callable[[bytes, socket.socket], bool | None]) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while not self.stopping.is_set():
                while b"\r\n\r\n" not in buffer:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    buffer += piece
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                self.heads.append(head)
                if not self.handler(head, conn):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def raw():
    servers: list[RawServer] = []

    def start(handler: Callable[[bytes, socket.socket], bool | None]) -> RawServer:
        server = RawServer(handler)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


def requested_range(head: bytes, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive from a ``Range: bytes=a-b`` request header, or None."""
    match = re.search(rb"(?im)^range:\s*bytes=(\d+)-(\d*)\s*$", head)
    if not match:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else size - 1
    return first, min(last, size - 1)


# -- Content-Encoding on ranges -----------------------------------------------------------------

def test_gzip_on_every_range_saves_exactly_the_served_representation(server, make_data, tmp_path):
    """The server ignores Accept-Encoding: identity and gzips every answer, 206s included.

    The ranges then address the gzip bytes consistently, so the only faithful file is the
    representation served (as curl without --compressed saves it): never a mix of decoded and
    encoded pieces.
    """
    data = make_data(3 * MiB, seed=31)
    res = server.add("/gz.bin", data, gzip_always=True)
    packed = gzip.compress(data, compresslevel=6, mtime=0)
    dest = tmp_path / "gz.bin"
    result = fetch(server.url("/gz.bin"), dest, connections=4, min_segment=64 << 10)
    assert result.size == len(packed)
    assert dest.read_bytes() == packed
    assert gzip.decompress(dest.read_bytes()) == data
    assert sum(1 for r in res.requests if r.range) >= 2, "it should still have used several ranges"


def test_gzip_appearing_on_a_later_range_never_mixes_representations(raw, make_data, tmp_path):
    """The first 206 is identity; every later range comes back gzip-encoded (a broken CDN)."""
    data = make_data(2 * MiB, seed=32)
    packed = gzip.compress(data, mtime=0)
    seen = {"ranges": 0}

    def handler(head: bytes, conn: socket.socket) -> bool:
        wanted = requested_range(head, len(data))
        if wanted is None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            return True
        seen["ranges"] += 1
        first, last = wanted
        if seen["ranges"] == 1:
            body, extra = data[first:last + 1], b""
        else:  # the same byte range of the gzip representation, labelled as such
            last = min(last, len(packed) - 1)
            body, extra = packed[first:last + 1], b"Content-Encoding: gzip\r\n"
        total = len(data) if not extra else len(packed)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                     b"Content-Length: %d\r\n%s\r\n" % (first, last, total, len(body), extra) + body)
        return True

    srv = raw(handler)
    dest = tmp_path / "mixed.bin"
    try:
        result = fetch(srv.url("/mixed.bin"), dest, connections=4, min_segment=64 << 10)
    except dlman.DownloadError:
        assert not dest.exists()
    else:
        assert result.size == len(data) and dest.read_bytes() == data


# -- framing lies ------------------------------------------------------------------------------

def test_content_length_together_with_chunked_never_saves_framing_bytes(raw, make_data, tmp_path):
    """RFC 9112 6.3: Transfer-Encoding wins over Content-Length (or the answer is refused)."""
    data = make_data(300_000, seed=33)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 50_000]), data[i:i + 50_000])
                      for i in range(0, len(data), 50_000)) + b"0\r\n\r\n"

    def handler(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n" % len(data) + chunks)

    srv = raw(handler)
    dest = tmp_path / "cl-te.bin"
    try:
        result = fetch(srv.url("/cl-te.bin"), dest, retries=1)
    except dlman.DownloadError:
        assert not dest.exists()
    else:
        assert result.size == len(data) and dest.read_bytes() == data


def test_body_far_longer_than_announced_is_cut_at_the_announced_length(raw, make_data, tmp_path):
    """Every answer sends 64 KiB of junk after the announced body, on a kept-alive connection."""
    data = make_data(2 * MiB, seed=34)
    junk = b"JUNK" * (16 << 10)

    def handler(head: bytes, conn: socket.socket) -> bool:
        first, last = requested_range(head, len(data)) or (0, len(data) - 1)
        body = data[first:last + 1]
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                     b"Content-Length: %d\r\nETag: \"long\"\r\n\r\n" % (first, last, len(data), len(body))
                     + body + junk)
        return True

    srv = raw(handler)
    dest = tmp_path / "long.bin"
    result = fetch(srv.url("/long.bin"), dest, connections=4, min_segment=256 << 10)
    assert result.size == len(data)
    assert dest.read_bytes() == data


def test_unsized_body_longer_than_a_200s_content_length_is_cut(raw, make_data, tmp_path):
    """No ranges: a 200 announcing 100 000 bytes that sends a megabyte keeps 100 000."""
    data = make_data(1 * MiB, seed=35)

    def handler(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n" + data)

    srv = raw(handler)
    dest = tmp_path / "cut.bin"
    result = fetch(srv.url("/cut.bin"), dest)
    assert result.size == 100_000 and dest.read_bytes() == data[:100_000]


# -- absurd heads --------------------------------------------------------------------------------

def test_a_megabyte_header_line_is_a_clear_error_and_no_file(raw, tmp_path):
    pad = b"a" * MiB

    def handler(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Pad: " + pad + b"\r\n\r\nhello")

    srv = raw(handler)
    dest = tmp_path / "huge-head.bin"
    started = time.monotonic()
    with pytest.raises(dlman.DownloadError) as info:
        fetch(srv.url("/huge-head.bin"), dest, retries=1)
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert srv.url("/huge-head.bin") in message and "\n" not in message
    assert files_under(tmp_path) == []


def test_a_hundred_thousand_headers_are_a_clear_error_and_no_file(raw, tmp_path):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))

    def handler(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + many + b"\r\nhello")

    srv = raw(handler)
    dest = tmp_path / "many.bin"
    with pytest.raises(dlman.DownloadError):
        fetch(srv.url("/many.bin"), dest, retries=1)
    assert files_under(tmp_path) == []


# -- slow loris --------------------------------------------------------------------------------

def trickle(conn: socket.socket, prefix: bytes, seconds: float, step: float = 0.4) -> None:
    """Send ``prefix``, then one byte every ``step`` seconds for ``seconds`` (or until the client goes)."""
    conn.sendall(prefix)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(step)
        conn.sendall(b"x")


def run_bounded(url: str, dest: Path, bound: float, **options) -> tuple[float, BaseException | None]:
    """Run a download for at most ``bound`` seconds; returns (elapsed, its exception or None)."""
    async def main() -> BaseException | None:
        async with dlman.Engine(**options) as engine:
            try:
                await asyncio.wait_for(engine.download(url, dest), bound)
            except asyncio.TimeoutError:
                raise AssertionError(f"still downloading after {bound}s: the engine hangs") from None
            except dlman.DownloadError as exc:
                return exc
        return None
    started = time.monotonic()
    error = asyncio.run(main())
    return time.monotonic() - started, error


def test_a_trickled_body_is_a_stall_and_the_engine_gives_up(raw, tmp_path):
    def handler(head: bytes, conn: socket.socket) -> None:
        trickle(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", 60)

    srv = raw(handler)
    dest = tmp_path / "loris.bin"
    elapsed, error = run_bounded(srv.url("/loris.bin"), dest, 20, timeout=1, retries=2)
    assert isinstance(error, dlman.NetworkError), error
    assert len(srv.heads) == 3, "one attempt and two retries"
    assert elapsed < 20
    assert not dest.exists()


def test_a_trickled_body_on_a_ranged_download_is_retried_then_completes(raw, make_data, tmp_path):
    """The first answer to each range trickles; the retry from the last byte gets the rest."""
    data = make_data(1 * MiB, seed=36)
    served: dict[tuple[int, int], int] = {}

    def handler(head: bytes, conn: socket.socket) -> bool:
        first, last = requested_range(head, len(data)) or (0, len(data) - 1)
        start = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n"
                 b"ETag: \"t\"\r\n\r\n" % (first, last, len(data), last - first + 1))
        served[(first, last)] = served.get((first, last), 0) + 1
        if len(served) == 1 and served[(first, last)] == 1:
            # The very first answer: 1000 real bytes, then one byte every 0.4 s.
            conn.sendall(start + data[first:first + 1000])
            for offset in range(first + 1000, last + 1):
                time.sleep(0.4)
                conn.sendall(data[offset:offset + 1])
            return False
        conn.sendall(start + data[first:last + 1])
        return True

    srv = raw(handler)
    dest = tmp_path / "slow.bin"
    elapsed, error = run_bounded(srv.url("/slow.bin"), dest, 20, timeout=1, connections=1)
    assert error is None
    assert dest.read_bytes() == data
    assert elapsed < 20


def test_a_trickled_head_is_a_stall_and_the_engine_gives_up(raw, tmp_path):
    def handler(head: bytes, conn: socket.socket) -> None:
        trickle(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ", 30)

    srv = raw(handler)
    dest = tmp_path / "loris-head.bin"
    elapsed, error = run_bounded(srv.url("/loris-head.bin"), dest, 6, timeout=1, retries=1)
    assert isinstance(error, dlman.NetworkError), error
    assert not dest.exists()


# -- 416 and an already complete file -------------------------------------------------------------

def test_complete_destination_and_a_416_for_an_empty_remote_is_skipped(server, tmp_path):
    res = server.add("/empty.bin", b"")
    dest = tmp_path / "empty.bin"
    dest.write_bytes(b"")
    result = fetch(server.url("/empty.bin"), dest)
    assert result.skipped and result.size == 0 and dest.read_bytes() == b""
    assert any(r.status == 416 for r in res.requests) or res.requests[0].status == 200


def test_complete_destination_with_a_server_answering_416_is_skipped_or_kept(server, make_data, tmp_path):
    """A server that answers every range with 416 bytes */N while the destination holds N bytes.

    SPEC rule 9 would call the file done; at the very least the existing file must stay intact.
    """
    data = make_data(100_000, seed=37)
    server.add("/done.bin", data, statuses=[(416, {"Content-Range": f"bytes */{len(data)}"})] * 20)
    dest = tmp_path / "done.bin"
    dest.write_bytes(data)
    try:
        result = fetch(server.url("/done.bin"), dest, retries=1)
    except dlman.DownloadError:
        pass
    else:
        assert result.skipped
    assert dest.read_bytes() == data
    assert files_under(tmp_path) == ["done.bin"]


def test_complete_destination_with_a_server_answering_416_is_skipped(server, make_data, tmp_path):
    data = make_data(100_000, seed=37)
    server.add("/done.bin", data, statuses=[(416, {"Content-Range": f"bytes */{len(data)}"})] * 20)
    dest = tmp_path / "done.bin"
    dest.write_bytes(data)
    result = fetch(server.url("/done.bin"), dest, retries=1)
    assert result.skipped and dest.read_bytes() == data


def test_complete_partial_data_with_a_stale_416_is_finished_or_restarted_never_wrong(server, make_data,
                                                                                     tmp_path):
    """The state says one byte is missing; the server now 416s everything: never a wrong file."""
    data = make_data(100_000, seed=38)
    res = server.add("/s416.bin", data, etag='"s"')
    dest = tmp_path / "s416.bin"
    dest.with_name("s416.bin.part").write_bytes(data)
    dest.with_name("s416.bin.part.state").write_bytes(
        b'{"version":1,"url":"%s","size":100000,"etag":"\\"s\\"","last_modified":null,"ranges":true,'
        b'"missing":[[99999,100000]]}' % server.url("/s416.bin").encode())
    res.statuses = [(416, {"Content-Range": "bytes */100000"})]
    result = fetch(server.url("/s416.bin"), dest)
    assert result.size == len(data) and dest.read_bytes() == data


# -- Content-Disposition names -------------------------------------------------------------------

HOSTILE_NAMES = {
    "dot-dot": 'attachment; filename="../../x"',
    "dot-dot star": "attachment; filename*=UTF-8''..%2F..%2Fx",
    "absolute": 'attachment; filename="/etc/passwd"',
    "absolute star": "attachment; filename*=UTF-8''%2Ftmp%2Fowned",
    "windows": 'attachment; filename="..\\\\..\\\\win.ini"',
    "drive": 'attachment; filename="C:\\\\Windows\\\\x.exe"',
    "nul": "attachment; filename*=UTF-8''a%00b.txt",
    "newline": "attachment; filename*=UTF-8''a%0A..%0Db.txt",
    "only dots": 'attachment; filename=".."',
    "hidden": 'attachment; filename=".bashrc"',
    "very long": 'attachment; filename="' + "n" * 5000 + '.txt"',
    "very long multibyte": "attachment; filename*=UTF-8''" + "%C3%A9" * 2000 + ".bin",
    "dot-dot in url too": None,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_NAMES))
def test_hostile_names_always_land_inside_the_directory(server, tmp_path, kind):
    path = "/a/..%2F..%2Fescape" if kind == "dot-dot in url too" else "/a/file.bin"
    server.add(path, b"payload", content_disposition=HOSTILE_NAMES[kind])
    out = tmp_path / "out"
    out.mkdir()
    result = fetch(server.url(path), out)
    assert result.path.parent == out
    assert result.path.read_bytes() == b"payload"
    name = result.path.name
    assert name not in ("", ".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode()) <= 255
    assert files_under(tmp_path) == [os.path.join("out", name)]


def test_nul_byte_in_a_raw_header_is_refused_or_sanitised(raw, tmp_path):
    def handler(head: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n"
                     b"Content-Disposition: attachment; filename=\"../a\x00b/../../c\"\r\n\r\npayload")

    srv = raw(handler)
    out = tmp_path / "out"
    out.mkdir()
    try:
        result = fetch(srv.url("/f"), out, retries=1)
    except dlman.DownloadError:
        assert files_under(tmp_path) == []
    else:
        assert result.path.parent == out and result.path.read_bytes() == b"payload"
        assert files_under(tmp_path) == [os.path.join("out", result.path.name)]
