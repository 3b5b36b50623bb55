"""The engine: one HTTP client, rate limiter and connection cap shared by the downloads of a run.

``Engine`` is the asyncio API; ``download()`` is the blocking one and works
inside a running event loop too (a notebook) by running its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from dlman.checksum import parse_checksum
from dlman.client import ClientOptions, check_client, make_client, netrc_auth, request_auth
from dlman.errors import InvalidInputError
from dlman.options import (
    HeadersInput,
    check_connections,
    check_urls,
    normalise_headers,
    parse_rate,
)
from dlman.naming import reserved
from dlman.ratelimit import RateLimiter
from dlman.segments import DEFAULT_MIN_SEGMENT
from dlman.result import DownloadResult, Progress
from dlman.transfer import Transfer

log = logging.getLogger("dlman")
T = TypeVar("T")

DEFAULT_CONNECTIONS = 8
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT = 30.0
NO_READ_TIMEOUT = 86400.0  # httpx.Timeout(read=None): the watchdog still ends a day-long stall
DEFAULT_PER_HOST = 16


def _check_auth(auth: object) -> httpx.Auth | None:
    """httpx's forms of ``auth``: an ``httpx.Auth``, a ``(user, password)`` tuple or a callable."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, (str, bytes)) for x in auth):
        return httpx.BasicAuth(*auth)
    if callable(auth):
        return _CallableAuth(auth)
    raise InvalidInputError(f"auth must be an httpx.Auth, a (user, password) tuple or a callable, got {auth!r}")


class _CallableAuth(httpx.Auth):
    """A callable that takes a request and returns it signed, as httpx accepts for ``auth``."""

    def __init__(self, function: Callable[[httpx.Request], httpx.Request]) -> None:
        self.function = function

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self.function(request)


def _check_dest(dest: str | os.PathLike[str]) -> tuple[Path, bool]:
    """The absolute destination and whether it is a directory (existing, or written with a slash)."""
    try:
        text = os.fspath(dest)
        if "\0" in str(text):
            raise ValueError("it holds a NUL character")
        target = Path(os.path.abspath(text))
        directory = target.is_dir() or text.endswith(("/", os.sep))
    except (TypeError, ValueError) as exc:  # not a path, or a NUL in it
        raise InvalidInputError(f"invalid destination {dest!r}: {exc}") from None
    if not directory and reserved(target.name):
        raise InvalidInputError(f"{target.name!r} is a name dlman keeps its partial data under: choose another")
    return target, directory


def _whole(value: object, name: str) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _check_timeout(timeout: object) -> httpx.Timeout:
    """A number of seconds (connect and read) or an ``httpx.Timeout``; InvalidInputError otherwise."""
    def seconds(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0

    if isinstance(timeout, httpx.Timeout):
        parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        if all(part is None or seconds(part) for part in parts):
            return timeout
    elif seconds(timeout):
        return httpx.Timeout(float(timeout), pool=None)  # type: ignore[arg-type]
    raise InvalidInputError(f"timeout must be a positive number of seconds or an httpx.Timeout, got {timeout!r}")


class Engine:
    """Downloads files; ``async with Engine(...) as engine: await engine.download(url, dest)``.

    Options given here are defaults for every download of the engine; most can be
    overridden per download. ``limit_rate`` is shared by all downloads at once.
    """

    def __init__(self, *, connections: int = DEFAULT_CONNECTIONS, retries: int = DEFAULT_RETRIES,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, headers: HeadersInput = None,
                 limit_rate: int | str | None = None, http2: bool = False, insecure: bool = False,
                 overwrite: bool = False, min_segment: int = DEFAULT_MIN_SEGMENT,
                 max_connections_per_host: int = DEFAULT_PER_HOST, save_interval: float = 1.0,
                 auth: httpx._types.AuthTypes | None = None, client: httpx.AsyncClient | None = None,
                 verify: bool | str | ssl.SSLContext = True, cert: httpx._types.CertTypes | None = None,
                 proxy: httpx._types.ProxyTypes | None = None, cookies: httpx._types.CookieTypes | None = None,
                 event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
                 verify_digest: bool = True) -> None:
        self.connections = check_connections(connections)
        if type(retries) is not int or retries < 0:
            raise InvalidInputError(f"retries must be a whole number >= 0, got {retries!r}")
        self.http_timeout = _check_timeout(timeout)
        self.retries = retries
        # The stall watchdog and the deadline for an answer's head: the read timeout.
        self.timeout = self.http_timeout.read if self.http_timeout.read is not None else NO_READ_TIMEOUT
        self.headers = normalise_headers(headers)
        rate = parse_rate(limit_rate)
        self.limiter = RateLimiter(rate) if rate else None
        self.http2 = http2
        self.insecure = insecure
        self.overwrite = overwrite
        self.min_segment = _whole(min_segment, "min_segment")
        self.max_per_host = _whole(max_connections_per_host, "max_connections_per_host")
        if isinstance(save_interval, bool) or not isinstance(save_interval, (int, float)) or not save_interval > 0:
            raise InvalidInputError(f"save_interval must be a positive number of seconds, got {save_interval!r}")
        self.save_interval = float(save_interval)
        self.verify_digest = bool(verify_digest)  # check the server's own digest when no checksum is given
        self.auth = _check_auth(auth)
        if isinstance(cookies, (dict, list)):
            # Name-value pairs say nothing of their domain: they go as a Cookie header, which
            # goes only where the user's credentials may go. A jar keeps its own domains.
            pairs = cookies.items() if isinstance(cookies, dict) else cookies
            self.headers.append(("Cookie", "; ".join(f"{name}={value}" for name, value in pairs)))
            cookies = None
        if client is not None:
            check_client(client, {"verify": verify is not True, "cert": cert, "proxy": proxy, "cookies": cookies,
                                  "event_hooks": event_hooks, "http2": http2, "insecure": insecure})
        self._callers_client = client
        self._options = ClientOptions(http2=http2, verify=False if insecure else verify, cert=cert, proxy=proxy,
                                      cookies=cookies, event_hooks=dict(event_hooks or {}),
                                      timeout=self.http_timeout)
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._client: httpx.AsyncClient | None = None
        self._netrc: httpx.Auth | None = None
        self.tls_problem: str | None = None
        if insecure:
            log.warning("TLS certificate verification is disabled (--insecure)")

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use the Engine as 'async with Engine(...) as engine'")
        return self._client

    async def __aenter__(self) -> "Engine":
        self._netrc = netrc_auth()
        if self._callers_client is not None:
            self._client = self._callers_client
        else:
            self._client, self.tls_problem = make_client(self._options)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None and self._client is not self._callers_client:
            await self._client.aclose()
        self._client = None

    def auth_for(self, request: httpx.Request, *, credentials: bool) -> Any:
        """The auth for one request (see ``client.request_auth``)."""
        client_auth = self._callers_client is not None and self._callers_client.auth is not None
        return request_auth(request, credentials=credentials, auth=self.auth, client_auth=client_auth,
                            netrc=self._netrc)

    async def acquire_host_slot(self, host: str) -> Callable[[], None]:
        """Wait for one of ``max_connections_per_host`` slots; returns its (idempotent) release."""
        slot = self._host_slots.setdefault(host, asyncio.Semaphore(self.max_per_host))
        await slot.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slot.release()
        return release

    async def download(self, url: str | Sequence[str], dest: str | os.PathLike[str] = ".", *,
                       on_progress: Callable[[Progress], None] | None = None,
                       checksum: str | None = None, connections: int | None = None,
                       headers: HeadersInput = None, overwrite: bool | None = None,
                       max_speed: int | str | None = None) -> DownloadResult:
        """Download ``url`` (or several mirrors of one file) to ``dest``.

        ``dest`` is a file path, or a directory (existing, or ending with a slash)
        in which the name comes from the server (SPEC rule 8). ``max_speed`` limits
        this download alone (bytes/s or ``"2M"``), within the engine's ``limit_rate``.
        """
        urls = check_urls(url)
        parsed_checksum = parse_checksum(checksum) if checksum else None
        speed = parse_rate(max_speed)
        count = check_connections(connections) if connections is not None else self.connections
        merged = self.headers + normalise_headers(headers)
        target, directory = _check_dest(dest)
        transfer = Transfer(self, urls, target, directory=directory, connections=count, headers=merged,
                            checksum=parsed_checksum,
                            overwrite=self.overwrite if overwrite is None else overwrite,
                            on_progress=on_progress,
                            limiter=RateLimiter(speed, within=self.limiter) if speed else self.limiter)
        return await transfer.run()


def download(url: str | Sequence[str], dest: str | os.PathLike[str] = ".", *,
             on_progress: Callable[[Progress], None] | None = None, checksum: str | None = None,
             **options: Any) -> DownloadResult:
    """Blocking download; engine options (connections, retries, timeout, headers, ...) as keywords."""
    per_download = {k: options.pop(k) for k in ("connections", "headers", "overwrite", "max_speed")
                    if k in options}

    async def main() -> DownloadResult:
        async with Engine(**options) as engine:
            return await engine.download(url, dest, on_progress=on_progress, checksum=checksum,
                                         **per_download)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    return _run_beside(main)


def _run_beside(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a loop of its own in a thread, the caller's loop being busy with this call
    (a notebook). Ctrl-C while waiting cancels it there (state saved) before going on."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def run() -> T:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        ready.set()
        return await main()

    def thread_main() -> None:
        try:
            box["result"] = asyncio.run(run())
        except BaseException as exc:  # handed over to the caller's thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="dlman-download", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.05)
    except BaseException:  # KeyboardInterrupt: stop the download as a cancel would, then go on
        ready.wait()
        if "task" in box:
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
