"""Parsers for the response headers a downloader must trust or refuse.

Each takes header text from an untrusted server and returns a value or ``None``;
none of them raises, because a malformed header is a fact about the server that
the caller decides how to treat.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:([0-9]+)-([0-9]+)|\*)\s*/\s*([0-9]+|\*)\s*$", re.IGNORECASE)
_MAX_DIGITS = 20          # beyond any real file size; keeps int() cheap and bounded
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True)
class ContentRange:
    """``bytes start-end/total`` (end inclusive, as on the wire); ``start`` is None for ``*/total``."""

    start: int | None
    end: int | None
    total: int | None

    @property
    def length(self) -> int:
        if self.start is None or self.end is None:
            return 0
        return self.end - self.start + 1


def parse_content_range(value: str | None) -> ContentRange | None:
    """A Content-Range header, or None when it is missing or malformed or self-contradictory."""
    if not value:
        return None
    match = _CONTENT_RANGE.match(value)
    if not match:
        return None
    start_text, end_text, total_text = match.groups()
    if any(text is not None and len(text) > _MAX_DIGITS for text in match.groups()):
        return None
    total = None if total_text == "*" else int(total_text)
    if start_text is None:
        return None if total is None else ContentRange(None, None, total)
    start, end = int(start_text), int(end_text)
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value[:_MAX_DIGITS]) if len(value) <= _MAX_DIGITS else MAX_RETRY_AFTER,
                         MAX_RETRY_AFTER))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_content_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition offers (``filename*`` before ``filename``), unsanitised.

    RFC 6266 with RFC 8187/5987 extended values (``UTF-8''...``). The result may
    still hold slashes or ``..``: naming rules decide what is safe.
    """
    if not value:
        return None
    plain: str | None = None
    extended: str | None = None
    for param in _split_params(value)[1:]:
        key, sep, raw = param.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "filename*":
            charset, q1, rest = raw.strip().partition("'")
            _lang, q2, encoded = rest.partition("'")
            if not (q1 and q2):
                continue
            try:
                extended = unquote(_unquote(encoded), encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeError):
                continue
        elif key == "filename":
            plain = _unquote(raw)
    name = extended if extended else plain
    return name or None


def strong_etag(value: str | None) -> str | None:
    """The ETag if it is strong (usable in If-Range); weak ETags (``W/"x"``) give None."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/") or not (len(value) >= 2 and value[0] == value[-1] == '"'):
        return None
    return value


def http_date_valid(value: str | None) -> str | None:
    """Last-Modified only if it parses as an HTTP date (servers send junk sometimes)."""
    if not value:
        return None
    try:
        return value.strip() if email.utils.parsedate_to_datetime(value) else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
