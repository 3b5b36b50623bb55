"""A fault-injecting HTTP/1.1 server for dlman's integration tests.

Standard library only. An asyncio streams server runs on its own event loop in a background
thread, so throttled, stalled and many concurrent connections cost almost nothing, and the
test thread stays free to drive the client. Every behaviour is a public, mutable attribute of a
:class:`Resource`, read afresh on each request (and, for pacing, on each slice of the body), so a
test can change the remote file or its misbehaviour while a download is running.

Import it from tests as ``from faultserver import FaultServer`` (``tests/`` is on ``sys.path``
because it has a conftest and no ``__init__``).
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip as _gzip
import hashlib
import random
import re
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, Callable, Union

__all__ = ["FaultServer", "Resource", "RequestRecord", "make_data"]

StatusEntry = Union[int, tuple[int, dict[str, str]]]

_HEAD_LIMIT = 64 * 1024  # a request head larger than this is refused (431)
_FAST_SLICE = 256 * 1024  # unthrottled bodies go out in slices this big
_DROP_SLICE = 16 * 1024  # drop_probability is defined per this many bytes
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def make_data(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes: tests can rebuild the expected file from the seed."""
    return random.Random(seed).randbytes(size)


class Headers(dict):  # type: ignore[type-arg]
    """Request headers keyed by lower-case name, looked up case-insensitively.

    A plain dict underneath so tests can print and compare it; repeated headers are joined
    with ", " as RFC 9110 allows.
    """

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(eq=False)
class RequestRecord:
    """One request as the server saw it, so tests can assert what the client asked for."""

    method: str
    path: str
    headers: Headers
    range: str | None
    status: int = 0  # the status line sent (0 until decided, e.g. during response_delay)
    time: float = 0.0  # time.monotonic() when the request head arrived


class _Cut(Exception):
    """Raised inside a handler to end the connection on purpose (drop, short body, stall)."""

    def __init__(self, abrupt: bool) -> None:
        super().__init__("abrupt" if abrupt else "graceful")
        self.abrupt = abrupt


@dataclass(eq=False, repr=False)
class Resource:
    """A file the server serves, plus every fault it should inject while serving it.

    All knobs are plain attributes read on every request, so mutating one from the test thread
    takes effect on the next request (throttles: on the next body slice).
    """

    path: str
    data: bytes = b""
    etag: str | None = None
    auto_etag: bool = False
    last_modified: str | None = None
    weak_etag: bool = False
    accept_ranges: bool = True
    ignore_range_after: int | None = None
    throttle: int | None = None
    first_range_throttle: int | None = None
    drop_after: int | None = None
    drop_after_once: bool = False
    drop_probability: float = 0.0
    seed: int = 0
    wrong_content_range: str | None = None
    short_body: int | None = None
    short_206: int | None = None
    stall_after: int | None = None
    stall_after_once: bool = False
    statuses: list[StatusEntry] = field(default_factory=list)
    status: int | None = None
    gzip: bool = False
    gzip_always: bool = False
    no_content_length: bool = False
    chunked: bool = False
    content_disposition: str | None = None
    redirect_to: str | None = None
    redirect_status: int = 302
    redirect_cycle: list[str] = field(default_factory=list)  # each request to the next in turn
    presign_ttl: float | None = None  # redirect to redirect_to?expires=NOW+TTL&X-Amz-Signature=...
    enforce_expiry: bool = False  # 403 (S3's XML) once the query's ``expires`` has passed
    expire_after: int | None = None  # ...or, the same, for every request after this many
    ignore_if_range: bool = False  # honour Range but answer 206 whatever If-Range says
    weak_date_window: float | None = None  # Apache: an If-Range date this fresh is weak (200)
    overlong_206: int | None = None  # junk bytes appended after a 206 body (Content-Length counts them)
    overlong_206_close: bool = False  # ...sent without Content-Length, the body ending at close
    connection_limit: int | None = None  # 503 to requests beyond this many at once
    # Called with each request first: (status, headers, body) answers it, None serves as usual.
    respond: Callable[[Any], tuple[int, dict[str, str], bytes] | None] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    response_delay: float = 0.0
    content_type: str = "application/octet-stream"

    # Counters: written on the server thread, read from the test thread.
    bytes_served: int = field(default=0, init=False)
    requests: list[RequestRecord] = field(default_factory=list, init=False)
    active: int = field(default=0, init=False)
    max_active: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ranged_seen = 0  # ranged requests so far, for ignore_range_after
        self._drop_used = False
        self._stall_used = False
        self._rng = random.Random(self.seed)
        self._rng_seed = self.seed
        # Digest and compression of a 64 MiB body are too slow to redo per segment request;
        # bytes are immutable, so caching on the object's identity is exact.
        self._etag_cache: tuple[bytes, str] | None = None
        self._gzip_cache: tuple[bytes, bytes] | None = None

    def __repr__(self) -> str:
        # The generated repr would print the whole body: megabytes in a failing assertion.
        changed = []
        for name, default in _KNOB_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                changed.append(f"{name}={value!r}")
        knobs = "".join(", " + c for c in changed)
        return (
            f"Resource({self.path!r}, {len(self.data)} bytes{knobs}, "
            f"bytes_served={self.bytes_served}, "
            f"requests={len(self.requests)}, active={self.active}, max_active={self.max_active})"
        )

    def reset_counters(self) -> None:
        """Start a new phase of a test: zero the counters and re-arm the one-shot faults.

        ``active`` is live state and is kept; ``max_active`` restarts from it. The "once" knobs,
        ``ignore_range_after`` and the drop_probability generator start over as for a new
        resource, so a phase behaves the same whether or not an earlier phase ran.
        """
        with self._lock:
            self.bytes_served = 0
            self.requests = []
            self.max_active = self.active
            self._ranged_seen = 0
            self._drop_used = False
            self._stall_used = False
            self._rng = random.Random(self.seed)
            self._rng_seed = self.seed

    # --- helpers used by the server thread -------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def _served(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def _random(self) -> float:
        """Draw from the seeded generator, re-seeding when a test changed ``seed``."""
        if self._rng_seed != self.seed:
            self._rng = random.Random(self.seed)
            self._rng_seed = self.seed
        return self._rng.random()

    def _gzipped(self, data: bytes) -> bytes:
        cached = self._gzip_cache
        if cached is not None and cached[0] is data:
            return cached[1]
        packed = _gzip.compress(data, compresslevel=6, mtime=0)
        self._gzip_cache = (data, packed)
        return packed

    def _current_etag(self, data: bytes, gzipped: bool) -> str | None:
        """The ETag header value for this representation, or None when none is configured."""
        weak = self.weak_etag
        if self.etag is not None:
            opaque = self.etag
            if opaque.startswith("W/"):
                weak, opaque = True, opaque[2:]
            opaque = opaque.strip('"')
        elif self.auto_etag:
            cached = self._etag_cache
            if cached is None or cached[0] is not data:
                cached = (data, hashlib.sha1(data).hexdigest())
                self._etag_cache = cached
            opaque = cached[1]
        else:
            return None
        if gzipped:
            opaque += "-gzip"  # as Apache does: a different representation, a different tag
        return f'W/"{opaque}"' if weak else f'"{opaque}"'


_KNOB_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
    for f in fields(Resource)
    if f.init and f.name not in ("path", "data")
}


@dataclass
class _Request:
    method: str
    target: str
    path: str
    version: str
    headers: Headers

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class _Plan:
    """What one response will look like; decided before the first byte is written."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | memoryview = b""
    body_offset: int = 0  # offset in the representation where the body starts
    close: bool = False  # close the connection after this response
    chunked: bool = False
    cut_at: int | None = None  # stop sending after this many body bytes...
    cut_kind: str = ""  # ..."drop" (abort), "short" (graceful close) or "stall"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _accepts_gzip(accept_encoding: str | None) -> bool:
    """True when Accept-Encoding lists gzip (or *) with a non-zero q."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        parts = [p.strip() for p in item.split(";")]
        coding = parts[0].lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """A single byte range as (first, last) inclusive, "unsatisfiable", or None to ignore it.

    Multiple ranges and malformed headers are ignored (answered 200 with the full body),
    which RFC 9110 allows.
    """
    m = _RANGE_RE.fullmatch(value)
    if m is None:
        return None
    # Absurdly long numbers mean "beyond any size"; int() would refuse >4300 digits anyway.
    first_s, last_s = (g if len(g) <= 30 else "9" * 30 for g in m.groups())
    if not first_s and not last_s:
        return None
    if not first_s:
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)



def quiet_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop's exception handler that silences clients vanishing (resets, failed TLS handshakes)."""
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError)):
        return
    if exc is None and "handshake" in str(context.get("message", "")).lower():
        return
    loop.default_exception_handler(context)


def record_error(errors: list[BaseException], server: str, exc: BaseException) -> None:
    """Keep a test server's own bug for the test to fail on, and show it."""
    errors.append(exc)
    print(f"{server}: internal error", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)

class FaultServer:
    """An HTTP/1.1 server on a background thread whose resources misbehave on request."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.total_connections = 0
        self.requests: list[RequestRecord] = []  # every request, including unknown paths
        self.errors: list[BaseException] = []  # bugs in this server (never client faults)
        self._resources: dict[str, Resource] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Start listening; returns once the port is bound so ``base_url`` is usable."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="faultserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("faultserver did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener and every connection (stalled ones too), then join the thread.

        ``start()`` may be called again afterwards: it listens on the same port, which lets a
        test simulate a server that goes away and comes back.
        """
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # loop already closed
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("faultserver thread did not stop within 10 s")
        self._thread = None
        self._loop = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- resources --------------------------------------------------------------------------

    def add(self, path: str, data: bytes = b"", **knobs: Any) -> Resource:
        """Register (or replace) the resource at ``path``; unknown knobs raise TypeError."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        res = Resource(path=path, data=data, **knobs)
        self._resources[path] = res
        return res

    def resource(self, path: str) -> Resource:
        return self._resources[path]

    # --- server thread ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # pragma: no cover - only on a bug in _serve
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                self._record_error(exc)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._loop = loop
        self._stop_event = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._handle,
                self.host,
                self.port,
                ssl=self.ssl_context,
                backlog=1024,
                limit=_HEAD_LIMIT,
                ssl_handshake_timeout=5 if self.ssl_context is not None else None,
            )
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for _ in range(3):
                # A few turns of the loop let just-accepted connections register their
                # handlers, so none is left behind half-open.
                for _ in range(3):
                    await asyncio.sleep(0)
                tasks = list(self._conns)
                if not tasks:
                    break
                for task, writer in list(self._conns.items()):
                    writer.transport.abort()
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, OSError):
                pass

    _loop_exception = staticmethod(quiet_loop_exception)

    def _record_error(self, exc: BaseException) -> None:
        record_error(self.errors, "faultserver", exc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests in sequence until close, a cut, or stop()."""
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        self.total_connections += 1
        graceful = True
        try:
            while True:
                req = await self._read_request(reader, writer)
                if req is None:
                    break
                if not await self._respond(req, reader, writer):
                    break
        except _Cut as cut:
            graceful = not cut.abrupt
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            graceful = False
        except asyncio.CancelledError:
            graceful = False
        except Exception as exc:
            graceful = False
            self._record_error(exc)
        finally:
            try:
                if graceful and not writer.transport.is_closing():
                    writer.close()
                    try:
                        await asyncio.wait_for(writer.wait_closed(), 2)
                    except BaseException:
                        pass
                writer.transport.abort()
            finally:
                self._conns.pop(task, None)

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        """Read one request head (and discard any body); None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise
            return None
        except asyncio.LimitOverrunError:
            await self._send_simple(writer, 431, close=True)
            raise _Cut(abrupt=False)
        text = head.decode("latin-1").lstrip("\r\n")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send_simple(writer, 400, close=True)
            raise _Cut(abrupt=False)
        method, target, version = parts
        headers = Headers()
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await self._send_simple(writer, 400, close=True)
                raise _Cut(abrupt=False)
            key = name.strip().lower()
            value = value.strip()
            if key in headers:
                value = headers[key] + ", " + value
            dict.__setitem__(headers, key, value)
        length = headers.get("content-length")
        if length is not None:
            try:
                await reader.readexactly(int(length))
            except ValueError:
                await self._send_simple(writer, 400, close=True)
                raise _Cut(abrupt=False)
        path = target
        if "://" in path:  # absolute-form, as sent to proxies
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return _Request(method.upper(), target, path, version, headers)

    # --- responses --------------------------------------------------------------------------

    def _lookup(self, req: _Request) -> Resource | None:
        res = self._resources.get(req.path)
        if res is None:
            res = self._resources.get(req.path.partition("?")[0])
        return res

    async def _respond(
        self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns whether the connection may carry another one."""
        record = RequestRecord(
            method=req.method,
            path=req.path,
            headers=req.headers,
            range=req.headers.get("range"),
            time=time.monotonic(),
        )
        self.requests.append(record)
        res = self._lookup(req)
        if res is None:
            record.status = 404
            await self._send_simple(
                writer, 404, close=not req.keep_alive, head_only=req.method == "HEAD"
            )
            return req.keep_alive
        res.requests.append(record)
        over_limit = res.connection_limit is not None and res.active >= res.connection_limit
        res._enter()
        left = False

        def finished() -> None:
            # Called just before the last bytes go out, so a client that has the whole
            # response never observes this response as still active.
            nonlocal left
            if not left:
                left = True
                res._leave()

        try:
            if res.response_delay > 0:
                await asyncio.sleep(res.response_delay)
            if over_limit:
                plan = self._simple_plan(503, None, res)
            else:
                plan = await self._plan(req, res)
            if not req.keep_alive:
                plan.close = True
            record.status = plan.status
            await self._send(req, res, plan, reader, writer, finished)
            return not plan.close
        finally:
            finished()

    def _base_headers(self, close: bool) -> list[tuple[str, str]]:
        return [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", "faultserver"),
            ("Connection", "close" if close else "keep-alive"),
        ]

    def _simple_plan(
        self, status: int, extra: dict[str, str] | None = None, res: Resource | None = None
    ) -> _Plan:
        if status < 200 or status in (204, 304):
            body = b""  # these statuses never carry a body
            headers = []
        else:
            body = f"{status} {_reason(status)}\n".encode()
            headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status != 204 and status >= 200:
            headers.append(("Content-Length", str(len(body))))
        headers += list((extra or {}).items())
        if res is not None:
            headers += list(res.headers.items())
        return _Plan(status=status, headers=headers, body=body)

    async def _send_simple(
        self, writer: asyncio.StreamWriter, status: int, close: bool, head_only: bool = False
    ) -> None:
        """Answer outside any resource (bad request, unknown path)."""
        plan = self._simple_plan(status)
        head = self._head_bytes(plan, close)
        writer.write(head if head_only else head + bytes(plan.body))
        await writer.drain()

    async def _plan(self, req: _Request, res: Resource) -> _Plan:
        """Decide status, headers, body and faults for one request to ``res``."""
        if res.respond is not None:
            answer = res.respond(req)
            if answer is not None:
                status, extra, body = answer
                return _Plan(status, [*extra.items(), ("Content-Length", str(len(body)))], body)
        if req.method not in ("GET", "HEAD"):
            return self._simple_plan(405, {"Allow": "GET, HEAD"}, res)
        if res.statuses:
            entry = res.statuses.pop(0)
            if isinstance(entry, tuple):
                return self._simple_plan(entry[0], entry[1], res)
            return self._simple_plan(int(entry), None, res)
        if res.status is not None:
            return self._simple_plan(res.status, None, res)
        if res.redirect_cycle:
            target = res.redirect_cycle[(len(res.requests) - 1) % len(res.redirect_cycle)]
            return self._simple_plan(res.redirect_status, {"Location": target}, res)
        if res.redirect_to is not None:
            target = res.redirect_to
            if res.presign_ttl is not None:
                expires = time.time() + res.presign_ttl
                signature = hashlib.sha256(f"{target}{expires}".encode()).hexdigest()
                target += f"?expires={expires:.3f}&X-Amz-Signature={signature}"
            return self._simple_plan(res.redirect_status, {"Location": target}, res)
        expired_by_count = res.expire_after is not None and len(res.requests) > res.expire_after
        if expired_by_count or (res.enforce_expiry and self._expired(req)):
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                    b"<Message>Request has expired</Message></Error>")
            return _Plan(403, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                         + list(res.headers.items()), body)

        data = res.data
        asked_gzip = _accepts_gzip(req.headers.get("accept-encoding"))
        gzipped = res.gzip_always or (res.gzip and asked_gzip)
        if gzipped and len(data) > 1 << 20:
            body = await asyncio.to_thread(res._gzipped, data)  # keep other connections moving
        elif gzipped:
            body = res._gzipped(data)
        else:
            body = data
        etag = res._current_etag(data, gzipped)

        headers: list[tuple[str, str]] = [("Content-Type", res.content_type)]
        if etag is not None:
            headers.append(("ETag", etag))
        if res.last_modified is not None:
            headers.append(("Last-Modified", res.last_modified))
        if res.content_disposition is not None:
            headers.append(("Content-Disposition", res.content_disposition))
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        if res.gzip or res.gzip_always:
            headers.append(("Vary", "Accept-Encoding"))

        view = memoryview(body)
        if res.no_content_length or res.chunked:
            # Streaming responses: ranges never apply, and nothing announces the size.
            if res.chunked:
                headers.append(("Transfer-Encoding", "chunked"))
            plan = _Plan(200, headers, view, 0, close=res.no_content_length, chunked=res.chunked)
        else:
            plan = self._plan_ranged(req, res, headers, view, etag)
        if req.method == "GET" and plan.status in (200, 206):
            self._plan_cut(res, plan)
        plan.headers += list(res.headers.items())
        return plan

    def _plan_ranged(
        self,
        req: _Request,
        res: Resource,
        headers: list[tuple[str, str]],
        body: memoryview,
        etag: str | None,
    ) -> _Plan:
        size = len(body)
        range_value = req.headers.get("range")
        selected: tuple[int, int] | str | None = None
        if res.accept_ranges:
            headers.append(("Accept-Ranges", "bytes"))
            if range_value is not None:
                res._ranged_seen += 1
                limit = res.ignore_range_after
                honour = limit is None or res._ranged_seen <= limit
                if honour and self._if_range_ok(req, res, etag):
                    selected = _parse_range(range_value, size)
        if selected is None:
            headers.append(("Content-Length", str(size)))
            return _Plan(200, headers, body, 0)
        if selected == "unsatisfiable":
            plan = self._simple_plan(416, {"Content-Range": f"bytes */{size}"})
            plan.headers = headers + plan.headers
            return plan
        assert isinstance(selected, tuple)
        first, last = selected
        if res.short_206 is not None:
            last = min(last, first + max(res.short_206, 1) - 1)
        shown_first, shown_total = first, size
        if res.wrong_content_range == "start":
            shown_first = first + 1
        elif res.wrong_content_range == "total":
            shown_total = size + 1
        headers.append(("Content-Range", f"bytes {shown_first}-{last}/{shown_total}"))
        piece: bytes | memoryview = body[first : last + 1]
        if res.overlong_206:
            piece = bytes(piece) + b"\x00" * res.overlong_206
        if res.overlong_206_close:
            return _Plan(206, headers, piece, first, close=True)
        headers.append(("Content-Length", str(len(piece))))
        return _Plan(206, headers, piece, first)

    @staticmethod
    def _expired(req: _Request) -> bool:
        query = req.target.partition("?")[2]
        for item in query.split("&"):
            name, _, value = item.partition("=")
            if name == "expires":
                try:
                    return float(value) < time.time()
                except ValueError:
                    return True
        return False

    @staticmethod
    def _if_range_ok(req: _Request, res: Resource, etag: str | None) -> bool:
        """RFC 9110 If-Range: a strong ETag must match exactly, a date must equal Last-Modified."""
        value = req.headers.get("if-range")
        if value is None or res.ignore_if_range:
            return True
        value = value.strip()
        if value.startswith('"') or value.startswith("W/"):
            return etag is not None and not etag.startswith("W/") and value == etag
        if res.last_modified is None or value != res.last_modified:
            return False
        if res.weak_date_window is not None:
            modified = email.utils.parsedate_to_datetime(res.last_modified).timestamp()
            return time.time() - modified >= res.weak_date_window  # as Apache: a fresh date is weak
        return True

    @staticmethod
    def _plan_cut(res: Resource, plan: _Plan) -> None:
        """Pick the earliest configured cut that falls inside this body, consuming "once" knobs."""
        length = len(plan.body)
        candidates: list[tuple[int, str]] = []
        if res.short_body is not None and res.short_body < length:
            candidates.append((max(res.short_body, 0), "short"))
        if res.drop_after is not None and res.drop_after < length:
            if not (res.drop_after_once and res._drop_used):
                candidates.append((max(res.drop_after, 0), "drop"))
        if res.stall_after is not None and res.stall_after < length:
            if not (res.stall_after_once and res._stall_used):
                candidates.append((max(res.stall_after, 0), "stall"))
        if not candidates:
            return
        plan.cut_at, plan.cut_kind = min(candidates)
        if plan.cut_kind == "drop":
            res._drop_used = True
        elif plan.cut_kind == "stall":
            res._stall_used = True

    def _head_bytes(self, plan: _Plan, close: bool) -> bytes:
        """Serialise the status line and headers; resource headers override built-in ones."""
        merged: dict[str, tuple[str, str]] = {}
        for name, value in self._base_headers(close) + plan.headers:
            merged[name.lower()] = (name, value)
        lines = [f"HTTP/1.1 {plan.status} {_reason(plan.status)}"]
        lines += [f"{name}: {value}" for name, value in merged.values()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(
        self,
        req: _Request,
        res: Resource,
        plan: _Plan,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        finished: Callable[[], None],
    ) -> None:
        head = self._head_bytes(plan, plan.close)
        if req.method == "HEAD" or plan.status not in (200, 206):
            # Error, redirect and 416 texts are not the resource's bytes: never counted or cut.
            finished()
            writer.write(head if req.method == "HEAD" else head + bytes(plan.body))
            await writer.drain()
            return
        if len(plan.body) == 0:
            finished()
        writer.write(head)
        await self._send_body(res, plan, reader, writer, finished)

    async def _send_body(
        self,
        res: Resource,
        plan: _Plan,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        finished: Callable[[], None],
    ) -> None:
        """Write the body in paced slices, counting only bytes that reached the socket."""
        loop = asyncio.get_running_loop()
        transport = writer.transport
        body = plan.body
        limit = len(body) if plan.cut_at is None else plan.cut_at
        sent = 0
        pending = 0  # bytes written but still in the transport buffer after the last drain
        pace_rate: int | None = None
        pace_t0 = loop.time()
        pace_base = 0
        try:
            while sent < limit:
                rate = res.throttle
                if plan.body_offset == 0 and res.first_range_throttle:
                    rate = res.first_range_throttle
                if rate is not None and rate <= 0:
                    rate = None
                if rate != pace_rate:  # a test changed the throttle mid-body: pace from here
                    pace_rate, pace_t0, pace_base = rate, loop.time(), sent
                size = _FAST_SLICE if rate is None else max(256, min(_DROP_SLICE, rate // 50))
                if res.drop_probability > 0:
                    size = min(size, _DROP_SLICE)
                n = min(size, limit - sent)
                if res.drop_probability > 0:
                    p = min(1.0, res.drop_probability) * n / _DROP_SLICE
                    if res._random() < p:
                        await self._abort_flushed(res, writer)
                if transport.is_closing():
                    raise ConnectionResetError("client went away")
                chunk = body[sent : sent + n]
                res._served(n)  # counted before the client can see it, so tests never race it
                sent += n
                if sent == len(body):
                    finished()
                if plan.chunked:
                    writer.write(f"{n:x}\r\n".encode())
                    writer.write(chunk)
                    writer.write(b"\r\n0\r\n\r\n" if sent == len(body) else b"\r\n")
                else:
                    writer.write(chunk)
                await writer.drain()
                pending = transport.get_write_buffer_size()
                if pace_rate is not None:
                    delay = pace_t0 + (sent - pace_base) / pace_rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
        except (ConnectionError, OSError, ssl.SSLError):
            res._served(-pending)  # whatever sat in the buffer died with the connection
            raise
        if plan.cut_at is None:
            if plan.chunked and len(body) == 0:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        if plan.cut_kind == "drop":
            await self._abort_flushed(res, writer)
        if plan.cut_kind == "short":
            raise _Cut(abrupt=False)
        # stall: keep the socket open, send nothing, until the client closes or stop() cancels.
        while await reader.read(65536):
            pass
        raise _Cut(abrupt=True)

    async def _abort_flushed(self, res: Resource, writer: asyncio.StreamWriter) -> None:
        """Cut the connection, but only after the bytes already counted have left the buffer.

        Otherwise the client would get fewer bytes than drop_after promises and bytes_served
        would overcount; a client that does not read within a second is charged only for what
        actually went out.
        """
        transport = writer.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while transport.get_write_buffer_size() > 0 and not transport.is_closing():
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.002)
        if not transport.is_closing():
            res._served(-transport.get_write_buffer_size())
        raise _Cut(abrupt=True)
