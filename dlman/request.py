"""One GET with dlman's rules, whatever client sends it.

Redirects are followed here, at most 20, so that each hop carries only the credentials its
origin may have (the user's headers, auth and URL credentials, and the client's own defaults);
the whole answer head, redirects included, has one deadline (httpx's read timeout is per read,
so a server trickling its headers would never trip it); the host's connection slot is held until
the body is closed. A failure is either ``Retry`` (it may pass) or ``SourceGone`` (this URL will
not serve the file).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from dlman.asynctools import within
from dlman.client import MAX_REDIRECTS
from dlman.errors import DownloadError, NetworkError, ProtocolError
from dlman.mirrors import Mirrors
from dlman.options import is_credential_header, mask_url

if TYPE_CHECKING:
    from dlman.engine import Engine

log = logging.getLogger("dlman")


class Retry(Exception):
    """A failure worth another attempt; ``after`` is the server's wish, if any."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class SourceGone(Exception):
    """This URL cannot serve the file (a 4xx, a TLS failure, another version of the file)."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


class Requester:
    """Sends a transfer's requests through its engine's client, for its mirrors' credentials."""

    def __init__(self, engine: "Engine", mirrors: Mirrors) -> None:
        self.engine = engine
        self.mirrors = mirrors

    async def get(self, url: str, extra: dict[str, str],
                  hops: list[httpx.Headers] | None = None) -> httpx.Response:
        """Send one GET (streamed), following redirects here, at most 20, so that each hop carries
        only the credentials its origin may have. The final host's connection slot is held until
        the response closes. Raises ``_Retry`` for what may pass and ``_MirrorGone`` for what will not.
        """
        engine = self.engine
        first = url
        loop = asyncio.get_running_loop()
        # httpx's read timeout is per read: a server trickling its headers would never trip it,
        # so the whole answer head (connects and redirects included) gets one deadline.
        deadline = loop.time() + engine.timeout
        for hop in range(MAX_REDIRECTS + 1):
            if engine.tls_problem and url[:6].lower() == "https:":
                raise SourceGone(NetworkError(f"{mask_url(url)}: {engine.tls_problem}", url=url))
            request, credentials = self.request(url, extra)
            log.info("GET %s %s", mask_url(url), extra.get("Range", ""))
            release = await engine.acquire_host_slot(request.url.host)
            try:
                response = await within(
                    max(0.0, deadline - loop.time()),
                    engine.client.send(request, stream=True, auth=engine.auth_for(request, credentials=credentials),
                                       follow_redirects=False),
                    discard=lambda late: late.aclose())
            except asyncio.TimeoutError:
                release()
                raise Retry(f"no response within {engine.timeout:g}s") from None
            except httpx.UnsupportedProtocol as exc:
                release()
                raise SourceGone(DownloadError(f"{mask_url(url)}: {exc}", url=url)) from None
            except httpx.TransportError as exc:
                release()
                if certificate_problem(exc):
                    why = engine.tls_problem or (f"TLS certificate verification failed ({exc}); "
                                                 "pass --insecure to skip verification")
                    raise SourceGone(NetworkError(f"{mask_url(url)}: {why}", url=url)) from None
                raise Retry(f"{type(exc).__name__}: {exc}") from None
            except BaseException:
                release()
                raise
            if not response.is_redirect:
                response.stream = ReleasingStream(response.stream, release)  # type: ignore[arg-type]
                return response
            try:
                await response.aclose()
            finally:
                release()
            if hops is not None:
                hops.append(response.headers)  # a redirector may say what the file is (X-Linked-Etag)
            try:
                url = str(request.url.join(response.headers["location"]))
            except (httpx.InvalidURL, UnicodeError) as exc:
                raise SourceGone(ProtocolError(f"{mask_url(url)}: a redirect to an invalid URL ({exc})",
                                                url=url)) from None
        raise SourceGone(NetworkError(f"{mask_url(first)}: too many redirects (more than {MAX_REDIRECTS})",
                                      url=first))

    def request(self, url: str, extra: dict[str, str]) -> tuple[httpx.Request, bool]:
        """The request for ``url``, and whether it may carry the user's credentials.

        On another origin than the first URL's, every credential-bearing header goes,
        the client's own defaults included; then the cookie jar adds back the cookies of that
        domain, since the jar matches them to their domains.
        """
        credentials = self.mirrors.credentials(url)
        client = self.engine.client
        try:
            request = client.build_request("GET", url, headers=self.headers(url, extra))
        except (httpx.InvalidURL, UnicodeError, ValueError) as exc:  # a redirect to a URL httpx refuses
            raise SourceGone(ProtocolError(f"{mask_url(url)}: cannot be requested ({exc})", url=url)) from None
        if not credentials:
            for name in [n for n in request.headers if is_credential_header(n)]:
                del request.headers[name]
            client.cookies.set_cookie_header(request)
        return request, credentials

    def headers(self, url: str, extra: dict[str, str]) -> httpx.Headers:
        """The user's headers that may go to ``url``, then dlman's own, then identity (SPEC rule 1)."""
        merged = httpx.Headers(self.mirrors.headers(url))
        merged.update(extra)
        merged["Accept-Encoding"] = "identity"
        return merged


class ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives back its host connection slot when closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


def certificate_problem(exc: Exception) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)
