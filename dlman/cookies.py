"""Cookie files in the Netscape ``cookies.txt`` format (``--load-cookies``, ``--save-cookies``).

curl, wget, aria2, yt-dlp and browser extensions write this format: one cookie per line, seven
TAB-separated fields (domain, include subdomains, path, secure, expiry, name, value), ``#``
comments, and ``#HttpOnly_`` before the domain of an HttpOnly cookie. Reading and writing are
pure; the jar they fill is the standard library's, whose policy keeps each cookie to its domain,
path, scheme (secure) and lifetime. One rule is made stricter here: a host-only cookie (include
subdomains FALSE) goes to exactly its own host, never to that host's subdomains.

The jar works through the engine's event hooks (``engine_options``), not as the client's cookie
jar: httpx copies a client's cookies into a jar of the standard policy for every request, which
would send a host-only cookie to subdomains too (and one of ``localhost`` nowhere).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dlman.errors import InvalidInputError

HTTP_ONLY = "#HttpOnly_"
HEADER = "# Netscape HTTP Cookie File\n# Written by dlman. It holds credentials: keep it private.\n\n"
_FIELDS = "domain, include subdomains, path, secure, expiry, name, value"


class CookieFileError(InvalidInputError):
    """A cookie file that cannot be read; ``problems`` are ``FILE:LINE: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _flag(text: str) -> bool | None:
    return {"TRUE": True, "FALSE": False}.get(text.strip().upper())


def parse_line(line: str) -> Cookie:
    """One cookie from one entry line (ValueError saying what is wrong)."""
    http_only = line.startswith(HTTP_ONLY)
    if http_only:
        line = line[len(HTTP_ONLY):]
    fields = line.split("\t")
    if len(fields) == 6:
        fields.append("")  # some writers drop the TAB before an empty value
    if len(fields) != 7:
        raise ValueError(f"expected 7 TAB-separated fields ({_FIELDS}), found {len(fields)}")
    domain, subdomains, path, secure, expires, name, value = fields
    domain = domain.strip().lower()
    include_subdomains, is_secure = _flag(subdomains), _flag(secure)
    if not domain:
        raise ValueError("empty domain")
    if include_subdomains is None:
        raise ValueError(f"include subdomains must be TRUE or FALSE, got {subdomains!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if is_secure is None:
        raise ValueError(f"secure must be TRUE or FALSE, got {secure!r}")
    try:
        expiry = int(float(expires))  # browser extensions sometimes write fractions of a second
    except ValueError:
        raise ValueError(f"expiry must be a number of seconds since 1970, got {expires!r}") from None
    if not name:
        raise ValueError("empty cookie name")
    return Cookie(
        version=0, name=name, value=value, port=None, port_specified=False,
        domain=domain, domain_specified=include_subdomains, domain_initial_dot=domain.startswith("."),
        path=path, path_specified=True, secure=is_secure,
        expires=expiry if expiry > 0 else None, discard=expiry <= 0,
        comment=None, comment_url=None, rest={"HttpOnly": ""} if http_only else {},
    )


def parse_cookies(text: str, source: str, *, now: float | None = None) -> list[Cookie]:
    """Every cookie of a file that has not expired; CookieFileError naming each bad line."""
    now = time.time() if now is None else now
    cookies, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (line.startswith("#") and not line.startswith(HTTP_ONLY)):
            continue
        try:
            cookie = parse_line(line)
        except ValueError as error:
            problems.append(f"{source}:{number}: {error}")
            continue
        if not cookie.is_expired(int(now)):
            cookies.append(cookie)
    if problems:
        raise CookieFileError(problems)
    return cookies


def format_cookies(cookies: Iterable[Cookie]) -> str:
    """The file's text: session cookies included (expiry 0), as curl writes them."""
    lines = [HEADER]
    for cookie in cookies:
        prefix = HTTP_ONLY if cookie.has_nonstandard_attr("HttpOnly") else ""
        subdomains = cookie.domain_specified or cookie.domain_initial_dot
        fields = (prefix + cookie.domain, "TRUE" if subdomains else "FALSE", cookie.path,
                  "TRUE" if cookie.secure else "FALSE", str(int(cookie.expires or 0)), cookie.name,
                  cookie.value or "")
        lines.append("\t".join(fields) + "\n")
    return "".join(lines)


class HostOnlyPolicy(DefaultCookiePolicy):
    """The standard policy, except that a host-only cookie goes to exactly its host.

    The standard library's liberal default would send a cookie of ``example.org`` (include
    subdomains FALSE) to ``any.example.org`` as well: another origin than its own.
    """

    def return_ok_domain(self, cookie: Cookie, request: Any) -> bool:
        if not cookie.domain_specified and not cookie.domain_initial_dot:
            host = (urlsplit(request.get_full_url()).hostname or "").lower()
            # ``HOST.local``: how the standard library records a host-only cookie a dotless host set.
            return cookie.domain.lower() in (host, host + ".local")
        return bool(super().return_ok_domain(cookie, request))


class _Never(DefaultCookiePolicy):
    """Keeps and sends nothing: the engine client's own jar stays out of the way of ours."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


def engine_options(jar: CookieJar) -> dict[str, Any]:
    """Engine options that send ``jar``'s cookies with every request (redirect hops and mirrors
    included, each by the jar's own rules) and keep the cookies servers set in it."""
    import httpx

    cookies = httpx.Cookies(jar)  # a view of the same jar, with httpx's adapters for requests

    async def send(request: httpx.Request) -> None:
        if "cookie" not in request.headers:  # a Cookie header the user gave wins
            cookies.set_cookie_header(request)

    async def keep(response: httpx.Response) -> None:
        cookies.extract_cookies(response)

    return {"cookies": CookieJar(policy=_Never()), "event_hooks": {"request": [send], "response": [keep]}}


def make_jar(cookies: Iterable[Cookie] = ()) -> CookieJar:
    jar = CookieJar(policy=HostOnlyPolicy())
    for cookie in cookies:
        jar.set_cookie(cookie)
    return jar


def _read(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{os.fspath(path)}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise InvalidInputError(f"cannot read cookie file {os.fspath(path)}: {error.strerror or error}") from None


def load_jar(path: str | os.PathLike[str]) -> CookieJar:
    """A jar holding the cookies of ``path`` (InvalidInputError if it cannot be read)."""
    return make_jar(parse_cookies(_read(path), os.fspath(path)))


def check_cookie_file(path: str | os.PathLike[str]) -> None:
    """InvalidInputError unless ``path`` is a readable cookie file."""
    load_jar(path)


def check_save_path(path: str | os.PathLike[str]) -> None:
    """InvalidInputError unless a cookie file can be written at ``path`` (its directory exists)."""
    target = Path(path)
    if target.is_dir():
        raise InvalidInputError(f"cannot save cookies to {target}: it is a directory")
    if not target.parent.is_dir():
        raise InvalidInputError(f"cannot save cookies to {target}: no directory {target.parent}")


def save_jar(jar: CookieJar, path: str | os.PathLike[str]) -> None:
    """Write the jar's cookies to ``path``, owner-only, replacing the file at once (never half written)."""
    target = Path(path)
    text = format_cookies(jar)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:  # mkstemp creates it 0600
            stream.write(text)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
