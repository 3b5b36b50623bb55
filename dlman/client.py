"""The HTTP client an engine downloads with: its own, set up from httpx's options, or the caller's.

dlman speaks httpx's language: ``auth``, ``verify``, ``cert``, ``proxy``, ``cookies``,
``event_hooks`` and ``timeout`` mean here what they mean to ``httpx.AsyncClient``. What dlman
adds is where credentials may go: the engine decides per request (``request_auth``), and
follows redirects itself so that no credential reaches another origin.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx

from dlman.errors import InvalidInputError

log = logging.getLogger("dlman")

USER_AGENT = "dlman/0.1.0"
MAX_REDIRECTS = 20
_BUILT_HERE = ("verify", "cert", "proxy", "cookies", "event_hooks", "http2", "insecure")


@dataclass
class ClientOptions:
    """What configures a client that dlman builds (each as httpx takes it)."""

    http2: bool = False
    verify: bool | str | ssl.SSLContext = True
    cert: Any = None
    proxy: Any = None
    cookies: Any = None
    event_hooks: dict[str, list[Any]] = field(default_factory=dict)
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(30.0, pool=None))


def check_client(client: object, given: dict[str, Any]) -> httpx.AsyncClient:
    """The caller's client, if dlman can download through it (InvalidInputError otherwise).

    dlman needs an open ``httpx.AsyncClient``; it sends each request with
    ``follow_redirects=False`` and follows redirects itself, so the client's own
    redirect settings do not matter. Options that configure a client dlman would
    build make no sense beside one the caller built.
    """
    if not isinstance(client, httpx.AsyncClient):
        raise InvalidInputError(f"client must be an httpx.AsyncClient, got {type(client).__name__}")
    if client.is_closed:
        raise InvalidInputError("client is closed")
    clashing = sorted(name for name in _BUILT_HERE if given.get(name))
    if clashing:
        raise InvalidInputError(f"{', '.join(clashing)} configure a client of dlman's own: set them on the "
                                "client you pass instead")
    return client


def ssl_context(verify: bool | str | ssl.SSLContext, cert: Any) -> tuple[ssl.SSLContext, str | None]:
    """The TLS context for every connection, and why it trusts nothing if the CAs would not load.

    ``verify`` as httpx takes it: True (the environment's SSL_CERT_FILE/SSL_CERT_DIR, else
    certifi), False, a CA bundle or directory path, or an ``ssl.SSLContext``. A CA file that
    cannot be read must not break plain HTTP (curl's behaviour): the context then trusts no
    certificate at all, so HTTPS fails (with the path named) and never falls back to other CAs.
    """
    try:
        if isinstance(verify, ssl.SSLContext):
            context = verify
        elif isinstance(verify, str):
            if os.path.isdir(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                context = ssl.create_default_context(cafile=verify)
        else:
            context = httpx.create_ssl_context(verify=verify, trust_env=True)
    except (OSError, ssl.SSLError) as exc:
        if isinstance(verify, str):
            source = f"verify={verify}"
        else:
            name = "SSL_CERT_FILE" if os.environ.get("SSL_CERT_FILE") else "SSL_CERT_DIR"
            source = f"{name}={os.environ.get(name, '')}"
        why = getattr(exc, "strerror", None) or str(exc)
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), f"cannot load CA certificates from {source} ({why})"
    if cert:
        try:
            if isinstance(cert, str):
                context.load_cert_chain(cert)
            else:
                context.load_cert_chain(*cert)
        except (OSError, ssl.SSLError, TypeError) as exc:
            raise InvalidInputError(f"cannot load the client certificate {cert!r}: {exc}") from None
    return context, None


def proxy_configured(proxy: Any) -> bool:
    return bool(proxy) or any(os.environ.get(name) for name in
                              ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"))


def make_client(options: ClientOptions) -> tuple[httpx.AsyncClient, str | None]:
    """A client for dlman's own use, and the TLS problem to report for HTTPS, if any."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=5.0)
    context, problem = ssl_context(options.verify, options.cert)
    if problem:
        log.warning("%s; HTTPS downloads will fail", problem)
    http2 = options.http2
    proxied = proxy_configured(options.proxy)
    if proxied and http2:
        # Through a proxy httpx's own HTTP/2 connections are used, and they stall when a
        # segment's stream is cut short: HTTP/1.1 over several connections is the safe path.
        log.warning("a proxy is configured: using HTTP/1.1 instead of HTTP/2")
        http2 = False
    extra: dict[str, Any] = {}
    if not proxied:
        from dlman import transport
        if transport.native_backend_available():
            extra["transport"] = transport.make_transport(verify=context, http2=http2, limits=limits)
    if options.proxy:
        extra["proxy"] = options.proxy
    client = httpx.AsyncClient(
        http2=http2, verify=context, timeout=options.timeout, limits=limits, follow_redirects=False,
        trust_env=True, cookies=options.cookies, event_hooks=options.event_hooks,
        headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT}, **extra,
    )
    return client, problem


def netrc_auth() -> httpx.Auth | None:
    """~/.netrc credentials, as curl -n and wget use them, when the file exists."""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not os.path.isfile(path):
        return None
    try:
        return httpx.NetRCAuth(path)
    except Exception as exc:  # a malformed netrc must not stop downloads that don't need it
        log.warning("ignoring %s: %s", path, exc)
        return None


def request_auth(request: httpx.Request, *, credentials: bool, auth: httpx.Auth | None,
                 client_auth: bool, netrc: httpx.Auth | None) -> Any:
    """The auth for one request, in curl's order.

    An explicit Authorization header, then the caller's ``auth``, then the URL's
    ``user:password``, then the caller's client's own auth, then ``~/.netrc`` (which
    names its hosts itself). On a URL that may not carry the user's credentials
    (another origin than the first URL's) only ``~/.netrc`` applies.
    """
    nothing = httpx.Auth()  # sends the request as it is
    if "authorization" in request.headers:
        return nothing
    if credentials:
        if auth is not None:
            return auth
        if request.url.username or request.url.password:
            return httpx.BasicAuth(request.url.username, request.url.password)
        if client_auth:
            return httpx.USE_CLIENT_DEFAULT
    return netrc or nothing
