"""Parsing and validating the options shared by the API, the CLI and manifests.

One place decides what a valid rate, header, URL or connection count is, so the
three front doors cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from dlman.errors import InvalidInputError

MIN_CONNECTIONS = 1
MAX_CONNECTIONS = 64

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)(?:i?[bB])?(?:/s)?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

Headers = list[tuple[str, str]]
HeadersInput = Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]] | None


def parse_rate(text: str | int | None) -> int | None:
    """Bytes per second from ``"512K"``, ``"2M"``, ``"1.5G"`` (1024 multiples, as curl and aria2)."""
    if text is None:
        return None
    if isinstance(text, int):
        if text <= 0:
            raise InvalidInputError(f"rate must be positive, got {text}")
        return text
    match = _RATE.match(text)
    if not match:
        raise InvalidInputError(f"invalid rate {text!r}: use a number with an optional K, M or G suffix")
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 0 < number < 1 << 62:
        raise InvalidInputError(f"rate {text!r} is out of range")
    value = int(number)
    if value <= 0:
        raise InvalidInputError(f"rate must be positive, got {text!r}")
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a (name, value) pair, refusing what httpx would send wrong."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not _TOKEN.match(name):
        raise InvalidInputError(f"invalid header {mask_header(text)!r}: expected 'Name: value'")
    value = value.strip()
    if "\r" in value or "\n" in value:
        raise InvalidInputError(f"invalid header {name!r}: the value holds a line break")
    return name, value


def normalise_headers(headers: HeadersInput) -> Headers:
    """Headers as a list of pairs from a mapping, pairs, or ``"Name: value"`` strings."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return [parse_header(f"{k}: {v}") for k, v in headers.items()]
    pairs: Headers = []
    for item in headers:
        if isinstance(item, str):
            pairs.append(parse_header(item))
        else:
            name, value = item
            pairs.append(parse_header(f"{name}: {value}"))
    return pairs


_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}


def is_secret_header(name: str) -> bool:
    """Whether a header carries credentials: masked when shown, sent only to its own origin."""
    lowered = name.strip().lower()
    return lowered in _SECRET_HEADERS or "token" in lowered or "secret" in lowered


def mask_header(text: str) -> str:
    """A header line safe to print: values of credential-bearing headers become ``***``."""
    name, sep, _value = text.partition(":")
    if not sep:
        return "***"
    if is_secret_header(name):
        return f"{name.strip()}: ***"
    return text


def mask_url(url: str) -> str:
    """The URL with any ``user:password@`` part replaced, for messages and listings."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """Free text (an error message, a log line) with any ``user:password@`` in URLs masked."""
    return _CREDENTIALS.sub("***@", text)


def check_url(url: str) -> str:
    """The URL, if it is an absolute http(s) URL with a host; else InvalidInputError."""
    try:
        parts = urlsplit(url.strip())
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or not port_ok:
        raise InvalidInputError(f"invalid URL {mask_url(url)!r}: expected http:// or https:// with a host")
    if any(ch.isspace() for ch in url.strip()):
        raise InvalidInputError(f"invalid URL {mask_url(url)!r}: it contains whitespace")
    return url.strip()


def check_urls(urls: str | Sequence[str]) -> list[str]:
    """One URL or several mirrors of the same file, each checked."""
    items = [urls] if isinstance(urls, str) else list(urls)
    if not items:
        raise InvalidInputError("no URL given")
    return [check_url(u) for u in items]


def check_connections(value: int) -> int:
    """A connection count within the 1..64 the SPEC allows."""
    if type(value) is not int or not MIN_CONNECTIONS <= value <= MAX_CONNECTIONS:
        raise InvalidInputError(
            f"connections must be between {MIN_CONNECTIONS} and {MAX_CONNECTIONS}, got {value!r}"
        )
    return value
