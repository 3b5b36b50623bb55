"""The sources of one file: which are alive, where their redirects led, what each may be sent.

A mirror is a URL the user gave. Its redirects are followed once per attempt
and the final URL is pinned, so that a redirector that sends every request to
another server (MirrorBrain, SourceForge) serves one download from one place;
the original URL is followed again when the pinned one stops serving
(401/403/404/410: an expired presigned URL) and on every new attempt.
Credentials the user gave go only to the origin of the first URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from dlman.options import Headers, is_credential_header


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides whether credentials may go to a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("", url, None)
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), default if port is None else port


def allows_credentials(url: str, credentials_origin: tuple[str, str, int | None]) -> bool:
    """Whether the user's credentials may go to ``url``: its origin is theirs, or is its HTTPS
    upgrade (the same host on the default ports, as httpx treats redirects)."""
    here = origin(url)
    upgrade = (credentials_origin[0] == "http" and credentials_origin[2] == 80
               and here == ("https", credentials_origin[1], 443))
    return here == credentials_origin or upgrade


def headers_for(url: str, credentials_origin: tuple[str, str, int | None], headers: Headers) -> Headers:
    """``headers`` without the credential-bearing ones unless ``url`` may have the user's credentials."""
    if allows_credentials(url, credentials_origin):
        return headers
    return [(name, value) for name, value in headers if not is_credential_header(name)]


@dataclass(eq=False)
class Mirror:
    """One URL of the file and what this download learnt about it."""

    url: str
    index: int
    target: str | None = None   # the final URL of its redirects, pinned for this attempt
    dead: bool = False
    worked: bool = False        # it has served bytes of this file
    failure: Exception | None = None

    @property
    def ask(self) -> str:
        """The URL to request: the pinned target once known, else the URL itself."""
        return self.target or self.url


class Mirrors:
    """The mirrors of one file, in the user's order, and the user's headers for them."""

    def __init__(self, urls: list[str], headers: Headers) -> None:
        self.all = [Mirror(url, i) for i, url in enumerate(urls)]
        self.user_headers = headers
        self.credentials_origin = origin(urls[0])

    @property
    def primary(self) -> Mirror:
        return self.all[0]

    def alive(self) -> list[Mirror]:
        return [m for m in self.all if not m.dead]

    def pick(self, index: int) -> Mirror | None:
        """The mirror for connection ``index``: connections are spread over the live mirrors."""
        alive = self.alive()
        return alive[index % len(alive)] if alive else None

    def headers(self, url: str) -> Headers:
        """The user's headers that may be sent to ``url``."""
        return headers_for(url, self.credentials_origin, self.user_headers)

    def credentials(self, url: str) -> bool:
        """Whether ``url`` may be sent the user's credentials (headers, auth, URL user:password)."""
        return allows_credentials(url, self.credentials_origin)

    def drop(self, mirror: Mirror, failure: Exception) -> None:
        mirror.dead = True
        mirror.failure = failure

    def new_attempt(self) -> None:
        """Every mirror is asked afresh: redirects followed again, dead ones tried again."""
        for mirror in self.all:
            mirror.target = None
            mirror.dead = False
            mirror.failure = None
