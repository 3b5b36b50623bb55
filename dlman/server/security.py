"""Who may talk to the daemon: the token, the Host a request names, the web origin it comes from.

Pure decisions over header values, so each rule has a table of cases in the unit tests.

* The token is compared in constant time (``hmac.compare_digest``), as aria2 does with an HMAC.
* A daemon on loopback answers only requests that name a loopback host: a web page whose own
  name was made to resolve to 127.0.0.1 (DNS rebinding) names its own host and is refused.
* A browser says where a request comes from (``Origin``, or ``Sec-Fetch-Site`` on a plain GET):
  a request from another origin is refused unless that origin was allowed with
  ``--allow-origin``. Without this, any page the user visits could post to the daemon (the
  answer is opaque to it, but the download would be added all the same).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from dlman.server.config import is_loopback

TOKEN_PREFIX = "token:"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_MAX_AGE = "1728000"  # what aria2 answers
FOREIGN_FETCH = ("cross-site", "same-site")


def token_ok(given: str | None, secret: str | None) -> bool:
    """Whether ``given`` is the secret (always, when there is none), in constant time."""
    if secret is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass"))


def split_token(params: Sequence[Any]) -> tuple[str | None, list[Any]]:
    """aria2's rule: a first parameter ``"token:..."`` is the token and is taken off the list."""
    rest = list(params)
    if rest and isinstance(rest[0], str) and rest[0].startswith(TOKEN_PREFIX):
        return rest.pop(0)[len(TOKEN_PREFIX):], rest
    return None, rest


def bearer(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer SECRET`` header (the REST API's form)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:6800`` gives ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str | None, loopback: bool) -> bool:
    """A daemon on loopback answers only to loopback names (no DNS rebinding)."""
    if not loopback or host is None:
        return True
    return is_loopback(host_name(host))


def own_origins(host: str | None) -> tuple[str, ...]:
    """The origins of the daemon's own page, as the browser names them."""
    if not host:
        return ()
    host = host.strip().lower()
    return (f"http://{host}", f"https://{host}")


def origin_allowed(headers: Mapping[str, str], allowed: Sequence[str]) -> bool:
    """Whether a request may act: it comes from no browser, from the daemon's own page, or from
    an origin allowed with ``--allow-origin`` (``*``: every one)."""
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site", "").lower() not in FOREIGN_FETCH or "*" in allowed
    origin = origin.strip().lower().rstrip("/")
    return "*" in allowed or origin in allowed or origin in own_origins(headers.get("host"))


def cors_headers(headers: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str]:
    """The CORS answer headers for an allowed cross-origin request (none for the others)."""
    origin = headers.get("origin")
    if origin is None:
        return {}
    normal = origin.strip().lower().rstrip("/")
    if "*" not in allowed and normal not in allowed:
        return {}
    return {"access-control-allow-origin": origin.strip(), "vary": "Origin"}


def preflight_headers(headers: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str] | None:
    """The answer headers to a CORS preflight, or None when the origin is not allowed."""
    cors = cors_headers(headers, allowed)
    if not cors or "access-control-request-method" not in headers:
        return None
    cors.update({"access-control-allow-methods": CORS_METHODS, "access-control-max-age": CORS_MAX_AGE})
    requested = headers.get("access-control-request-headers")
    if requested:
        cors["access-control-allow-headers"] = requested
    return cors
