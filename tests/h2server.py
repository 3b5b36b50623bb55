"""An HTTPS server for dlman's HTTP/2 tests: h2 and HTTP/1.1 on one port, chosen by ALPN.

Built on the ``h2`` state machine and ``trustme`` certificates. Like :mod:`faultserver`, it runs
its own asyncio loop on a background thread and serves resources whose knobs are plain mutable
attributes, read on every request (throttle: on every slice), and it records what it saw, so a
test can assert which protocol was spoken, how many streams there were and which were reset.

HTTP/2 is served properly: flow control both ways (DATA waits for the client's windows; request
bodies are acknowledged), many concurrent streams interleaved, RST_STREAM from the client stops
that stream at once. The HTTP/1.1 path is minimal (keep-alive GETs) but has the same range
semantics, so the same server and TLS can compare both protocols.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trustme

from faultserver import _parse_range, quiet_loop_exception, record_error

__all__ = ["H2Server", "H2Resource", "H2Request"]

_SLICE = 64 * 1024  # the most one stream sends before letting the others have a turn
_HEAD_LIMIT = 64 * 1024


@dataclass(eq=False)
class H2Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    protocol: str  # "h2" or "http/1.1"
    stream_id: int = 0  # 0 on HTTP/1.1
    status: int = 0
    length: int = 0  # body bytes the response was to carry
    sent: int = 0  # body bytes handed to the connection for this request
    resets: int = 0  # RST_STREAM frames the client sent for this stream
    stopped: bool = False  # one of them arrived while the response was still being sent


@dataclass(eq=False, repr=False)
class H2Resource:
    """A file the server serves, and how it should misbehave; knobs are read per request."""

    path: str
    data: bytes = b""
    etag: str | None = None  # default: derived from the content
    throttle: int | None = None  # bytes per second, per stream (per response on HTTP/1.1)
    ignore_range: bool = False  # answer ranged requests 200 with the whole file
    reset_after: int | None = None  # drop the response after this many body bytes...
    reset_once: bool = True  # ...only the first time

    # Counters: written on the server thread, read from the test thread.
    requests: list[H2Request] = field(default_factory=list, init=False)
    bytes_served: int = field(default=0, init=False)
    resets_received: int = field(default=0, init=False)  # RST_STREAM frames, all streams

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._reset_used = False
        if self.etag is None:
            self.etag = '"' + hashlib.sha1(self.data).hexdigest()[:16] + '"'

    def __repr__(self) -> str:
        return (f"H2Resource({self.path!r}, {len(self.data)} bytes, requests={len(self.requests)}, "
                f"bytes_served={self.bytes_served}, resets_received={self.resets_received})")

    @property
    def protocols(self) -> set[str]:
        return {r.protocol for r in self.requests}

    def _served(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def _reset_received(self, record: H2Request) -> None:
        with self._lock:
            self.resets_received += 1
            record.resets += 1

    def _cut_at(self) -> int | None:
        """Where this response is dropped, if at all; consumes a once-only drop."""
        if self.reset_after is None or (self.reset_once and self._reset_used):
            return None
        self._reset_used = True
        return self.reset_after


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: memoryview


def _answer(res: H2Resource | None, method: str, range_value: str | None) -> _Answer:
    """Status, headers and body for one request: the range semantics both protocols share."""
    if res is None:
        return _Answer(404, [("content-length", "0")], memoryview(b""))
    if method not in ("GET", "HEAD"):
        return _Answer(405, [("content-length", "0"), ("allow", "GET, HEAD")], memoryview(b""))
    body = memoryview(res.data)
    size = len(body)
    headers = [("accept-ranges", "bytes"), ("etag", res.etag or ""),
               ("content-type", "application/octet-stream")]
    selected = None if range_value is None or res.ignore_range else _parse_range(range_value, size)
    if selected == "unsatisfiable":
        return _Answer(416, headers + [("content-range", f"bytes */{size}"), ("content-length", "0")],
                       memoryview(b""))
    if isinstance(selected, tuple):
        first, last = selected
        headers += [("content-range", f"bytes {first}-{last}/{size}"),
                    ("content-length", str(last - first + 1))]
        return _Answer(206, headers, body[first:last + 1])
    return _Answer(200, headers + [("content-length", str(size))], body)


class _Pacer:
    """Spaces a body's slices so that it leaves at ``res.throttle`` bytes per second."""

    def __init__(self, res: H2Resource) -> None:
        self.res = res
        self.loop = asyncio.get_running_loop()
        self.rate: int | None = None
        self.t0 = 0.0
        self.base = 0

    def slice(self) -> int:
        rate = self.res.throttle
        return _SLICE if not rate else max(256, min(_SLICE, rate // 50))

    async def pace(self, sent: int) -> None:
        rate = self.res.throttle or None
        if rate != self.rate:  # changed mid-body: pace from here
            self.rate, self.t0, self.base = rate, self.loop.time(), sent
        if rate is not None:
            delay = self.t0 + (sent - self.base) / rate - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


class _ResetCounter:
    """Finds the RST_STREAM frames in the bytes a client sends.

    h2 reports only a reset that stops a live stream (one on a stream already finished is
    dropped silently), and the tests want every one the client sent.
    """

    PREFACE = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", before the first frame

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = self.PREFACE

    def feed(self, data: bytes) -> list[int]:
        """The stream ids of the RST_STREAM frames whose header ``data`` completes."""
        self._buf += data
        found = []
        while True:
            if self._skip:
                step = min(self._skip, len(self._buf))
                del self._buf[:step]
                self._skip -= step
                if self._skip:
                    return found
            if len(self._buf) < 9:
                return found
            length = int.from_bytes(self._buf[:3], "big")
            if self._buf[3] == 0x3:  # RST_STREAM
                found.append(int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF)
            self._skip = 9 + length


class _H2Conn:
    """One HTTP/2 connection: a read loop, and one sending task per stream."""

    def __init__(self, server: H2Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, tuple[asyncio.Task[None], H2Request, H2Resource | None]] = {}
        self.records: dict[int, tuple[H2Request, H2Resource | None]] = {}  # every stream
        self._resets = _ResetCounter()
        # Set (and replaced) whenever a window may have grown; one Event per generation,
        # so a waiter cancelled by a reset never cancels the wait of the others.
        self._window = asyncio.Event()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)

    def _window_changed(self) -> None:
        """Wake every stream waiting for its turn, to look at the windows again."""
        self._window.set()
        self._window = asyncio.Event()

    def _window_of(self, sid: int) -> int:
        try:
            return self.h2.local_flow_control_window(sid)
        except h2.exceptions.ProtocolError:  # closed meanwhile
            return 0

    def _allowance(self, sid: int) -> int:
        """How much stream ``sid`` may send now: its flow-control window, and in sequential
        mode nothing while a lower stream could send instead."""
        window = self._window_of(sid)
        if window > 0 and self.server.sequential:
            if any(other < sid and self._window_of(other) > 0 for other in self.streams):
                return 0
        return window

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.flush()
        try:
            while True:
                data = await self.reader.read(256 * 1024)
                if not data:
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    return
                for event in events:
                    if self._dispatch(event):
                        self.flush()
                        return
                for sid in self._resets.feed(data):
                    record, res = self.records.get(sid, (None, None))
                    if record is not None and res is not None:
                        res._reset_received(record)
                self.flush()
                await self.writer.drain()
        finally:
            for task, _, _ in list(self.streams.values()):
                task.cancel()
            if self.streams:
                await asyncio.wait([t for t, _, _ in self.streams.values()], timeout=5)

    def _dispatch(self, event: h2.events.Event) -> bool:
        """Handle one event; True when the connection is over."""
        if isinstance(event, h2.events.RequestReceived):
            self._start_stream(event)
        elif isinstance(event, h2.events.DataReceived):
            # Request bodies are read and dropped, but acknowledged: flow control both ways.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            entry = self.streams.pop(event.stream_id, None)
            if entry is not None:
                task, record, _ = entry
                task.cancel()
                record.stopped = event.remote_reset
            self._window_changed()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_changed()
        elif isinstance(event, h2.events.ConnectionTerminated):
            return True
        return False

    def _start_stream(self, event: h2.events.RequestReceived) -> None:
        headers = dict(event.headers or [])
        method, target = headers.get(":method", ""), headers.get(":path", "")
        path = target.partition("?")[0]
        record = H2Request(method, path, headers.get("range"), "h2", event.stream_id or 0)
        res = self.server._lookup(path)
        self.server.requests.append(record)
        if res is not None:
            res.requests.append(record)
        self.records[record.stream_id] = (record, res)
        task = asyncio.get_running_loop().create_task(self._respond(record, res))
        self.streams[record.stream_id] = (task, record, res)

    async def _respond(self, record: H2Request, res: H2Resource | None) -> None:
        sid = record.stream_id
        answer = _answer(res, record.method, record.range)
        body = answer.body if record.method == "GET" else memoryview(b"")
        record.status, record.length = answer.status, len(body)
        try:
            self.h2.send_headers(sid, [(":status", str(answer.status))] + answer.headers,
                                 end_stream=not body)
            self.flush()
            if not body:
                return
            assert res is not None
            cut = res._cut_at()
            limit = len(body) if cut is None else min(cut, len(body))
            pacer = _Pacer(res)
            sent = 0
            waiting = False
            while sent < limit:
                window = self._allowance(sid)
                if window <= 0:
                    if not waiting:  # just blocked: the next stream in line may go
                        waiting = True
                        self._window_changed()
                    await self._window.wait()
                    continue
                waiting = False
                n = min(window, pacer.slice(), limit - sent)
                end = sent + n
                while sent < end:  # frames no larger than the client allows
                    size = min(end - sent, self.h2.max_outbound_frame_size)
                    self.h2.send_data(sid, body[sent:sent + size],
                                      end_stream=sent + size == len(body))
                    sent += size
                res._served(n)
                record.sent = sent
                self.flush()
                await self.writer.drain()
                await pacer.pace(sent)
                await asyncio.sleep(0)  # let the other streams interleave
            if cut is not None:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.flush()
        except h2.exceptions.ProtocolError:
            pass  # the stream was reset, or the connection closed, between two checks
        except (ConnectionError, OSError):
            pass  # the client went away
        except Exception as exc:
            self.server._record_error(exc)
        finally:
            self.streams.pop(sid, None)
            self._window_changed()


class H2Server:
    """HTTPS on 127.0.0.1 that speaks h2 or HTTP/1.1, whichever the client picks over ALPN."""

    def __init__(self, *, alpn: tuple[str, ...] = ("h2", "http/1.1"),
                 ca: trustme.CA | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.ca = ca or trustme.CA()
        self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.ssl_context)
        self.ssl_context.set_alpn_protocols(list(alpn))
        # How concurrent h2 responses share the connection: interleaved (RFC 9113's default,
        # equal weights) or, when True, one at a time in stream-id order (RFC 9218's default
        # for non-incremental responses), a lower stream yielding only while it has no window.
        self.sequential = False
        self.requests: list[H2Request] = []
        self.connections: list[str] = []  # the protocol of every connection, in order
        self.errors: list[BaseException] = []  # bugs in this server (never client faults)
        self._resources: dict[str, H2Resource] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._tasks: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> H2Server:
        if self._thread is None:
            self._ready.clear()
            self._thread = threading.Thread(target=self._main, name="h2server", daemon=True)
            self._thread.start()
            if not self._ready.wait(10):
                raise RuntimeError("h2server did not start within 10 s")
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("h2server thread did not stop within 10 s")
        self._thread = self._loop = None

    def __enter__(self) -> H2Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"https://{self.host}:{self.port}{path}"

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate as PEM (for SSL_CERT_FILE); returns ``path``."""
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    # --- resources --------------------------------------------------------------------------

    def add(self, path: str, data: bytes = b"", **knobs: Any) -> H2Resource:
        res = H2Resource(path=path, data=data, **knobs)
        self._resources[path] = res
        return res

    def resource(self, path: str) -> H2Resource:
        return self._resources[path]

    def _lookup(self, path: str) -> H2Resource | None:
        return self._resources.get(path)

    # --- server thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # pragma: no cover - only on a bug in _serve
            self._record_error(exc)
            self._ready.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._loop = loop
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port,
                                            ssl=self.ssl_context, ssl_handshake_timeout=5,
                                            limit=_HEAD_LIMIT)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for _ in range(3):
                await asyncio.sleep(0)
                tasks = list(self._tasks)
                if not tasks:
                    break
                for task, writer in list(self._tasks.items()):
                    writer.transport.abort()
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)

    _loop_exception = staticmethod(quiet_loop_exception)

    def _record_error(self, exc: BaseException) -> None:
        record_error(self.errors, "h2server", exc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = (ssl_object.selected_alpn_protocol() if ssl_object else None) or "http/1.1"
        self.connections.append(protocol)
        try:
            if protocol == "h2":
                await _H2Conn(self, reader, writer).run()
            else:
                await self._serve_http11(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:
            self._record_error(exc)
        finally:
            writer.transport.abort()
            self._tasks.pop(task, None)

    async def _serve_http11(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """Keep-alive GET/HEAD with the same answers as h2; a drop closes the connection."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            path = target.partition("?")[0]
            record = H2Request(method, path, headers.get("range"), "http/1.1")
            res = self._lookup(path)
            self.requests.append(record)
            if res is not None:
                res.requests.append(record)
            answer = _answer(res, method, record.range)
            body = answer.body if method == "GET" else memoryview(b"")
            record.status, record.length = answer.status, len(body)
            status_line = f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}"
            writer.write(("\r\n".join([status_line] + [f"{k}: {v}" for k, v in answer.headers])
                          + "\r\n\r\n").encode("latin-1"))
            if body:
                assert res is not None
                cut = res._cut_at()
                limit = len(body) if cut is None else min(cut, len(body))
                pacer = _Pacer(res)
                sent = 0
                while sent < limit:
                    if writer.transport.is_closing():
                        raise ConnectionResetError("client went away")
                    n = min(pacer.slice(), limit - sent)
                    writer.write(body[sent:sent + n])
                    sent += n
                    res._served(n)
                    record.sent = sent
                    await writer.drain()
                    await pacer.pace(sent)
                    await asyncio.sleep(0)  # a lost connection is noticed between turns
                if cut is not None:
                    return  # dropped: the connection closes with the body unfinished
            await writer.drain()
