"""What a server's answer says, and what dlman does about it (pure: no I/O).

Every response is read once into an :class:`Answer` (status, ranges, lengths,
validators), and every decision about an answer is taken here, in one place:
:func:`judge_first` for the request that discovers the file and
:func:`judge_range` for every later request of a part of it. The transfer only
acts on the :class:`Verdict` it gets back.
"""

from __future__ import annotations

import email.utils
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from dlman.httpheaders import ContentRange, parse_content_range, parse_retry_after, strong_etag
from dlman.retry import is_retryable_status, status_message

GONE_STATUSES = frozenset({401, 403, 404, 410})  # this source will not serve us; another might
STRONG_DATE_GAP = 1.0  # RFC 9110 8.8.2.2: Last-Modified a second or more before Date is strong


@dataclass(frozen=True)
class Validators:
    """What identifies one version of a file on one server.

    ``etag`` is kept only when strong. ``last_modified`` is kept as sent, for
    comparison; it may go in If-Range only when ``date_is_strong``: a date less
    than a second before the response's own Date could name two versions written
    within that second (Apache then answers If-Range with the whole file).
    """

    etag: str | None = None
    last_modified: str | None = None
    date_is_strong: bool = False

    def if_range(self) -> str | None:
        """The value for If-Range, or None when nothing is safe to send."""
        if self.etag:
            return self.etag
        return self.last_modified if self.date_is_strong else None

    def contradicts(self, other: "Validators") -> bool:
        """Whether two answers certainly describe different versions (a missing value proves nothing)."""
        if self.etag and other.etag:
            return self.etag != other.etag
        if self.last_modified and other.last_modified:
            return _date(self.last_modified) != _date(other.last_modified)
        return False

    @property
    def empty(self) -> bool:
        return not (self.etag or self.last_modified)


def _date(text: str) -> datetime | None:
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def read_validators(headers: Mapping[str, str]) -> Validators:
    """Strong ETag and a parseable Last-Modified, with whether the date is strong."""
    etag = strong_etag(headers.get("etag"))
    modified_text = headers.get("last-modified")
    modified = _date(modified_text) if modified_text else None
    if modified is None:
        return Validators(etag)
    served = _date(headers.get("date") or "")
    strong = False
    if served is not None and (served.tzinfo is None) == (modified.tzinfo is None):
        strong = (served - modified).total_seconds() >= STRONG_DATE_GAP
    return Validators(etag, modified_text.strip() if modified_text else None, strong)


@dataclass(frozen=True)
class Answer:
    """The parts of a response head that decide what its body is."""

    status: int
    content_range: ContentRange | None
    content_length: int | None
    validators: Validators
    encoding: str | None
    chunked: bool
    retry_after: float | None
    raw_content_range: str | None = None
    reason: str = ""

    @property
    def body_end(self) -> int | None:
        """The file offset where this body ends, when the headers say."""
        if self.status == 206:
            if self.content_range is None or self.content_range.end is None:
                return None
            return self.content_range.end + 1
        return None if self.chunked else self.content_length


def read_answer(status: int, headers: Mapping[str, str], reason: str = "") -> Answer:
    """Parse once what every later decision needs; never raises on hostile headers."""
    encoding = (headers.get("content-encoding") or "").strip().lower()
    raw_range = headers.get("content-range")
    return Answer(
        status=status,
        content_range=parse_content_range(raw_range),
        content_length=parse_length(headers.get("content-length")),
        validators=read_validators(headers),
        encoding=None if encoding in ("", "identity") else encoding,
        chunked="chunked" in (headers.get("transfer-encoding") or "").lower(),
        retry_after=parse_retry_after(headers.get("retry-after")),
        raw_content_range=raw_range,
        reason=reason,
    )


def parse_length(text: str | None) -> int | None:
    """A Content-Length, or None when missing or not a plain number."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


@dataclass(frozen=True)
class RemoteFile:
    """The file as the first answer described it: the reference every later answer must match."""

    size: int | None
    ranges: bool
    validators: Validators
    encoding: str | None


class Action(Enum):
    ACCEPT = "accept"        # write the body: [start, end) of the file
    RETRY = "retry"          # a passing fault: ask again later (Retry-After in ``after``)
    GONE = "gone"            # this source will not serve the file (401/403/404/410)
    FATAL = "fatal"          # the download cannot succeed (other 4xx, refusals)
    FALLBACK = "fallback"    # ranges cannot be trusted: one plain stream from zero
    CHANGED = "changed"      # the source now holds another version of the file
    REFUSED = "refused"      # 416: the range lies outside the file (``total`` when known)
    UNCONFIRMED = "unconfirmed"  # If-Range neither honoured nor refused: ask again without it


@dataclass(frozen=True)
class Verdict:
    action: Action
    why: str = ""
    after: float | None = None   # RETRY: the server's Retry-After
    status: int = 0              # GONE / FATAL: the status that ended it
    start: int = 0               # ACCEPT: file offset of the body's first byte
    end: int | None = None       # ACCEPT: file offset where the body ends (None: unknown)
    total: int | None = None     # REFUSED: the size the 416 claims


def _by_status(answer: Answer) -> Verdict:
    """The verdict for a status that carries no part of the file."""
    status = answer.status
    if is_retryable_status(status):
        return Verdict(Action.RETRY, f"HTTP {status}", after=answer.retry_after)
    message = status_message(status, answer.reason)
    if status in GONE_STATUSES:
        return Verdict(Action.GONE, message, status=status)
    return Verdict(Action.FATAL, message if status >= 400 else f"unexpected HTTP {status}", status=status)


def judge_first(answer: Answer, *, ranged: bool) -> tuple[Verdict, RemoteFile | None]:
    """The answer to the first request (``Range: bytes=0-`` when ``ranged``): what the file is.

    A 206 must cover the file from byte 0 and give its total; a 200 is a whole
    body (its size from Content-Length unless chunked).
    """
    if answer.status == 206:
        content_range = answer.content_range
        if content_range is None or content_range.start != 0 or content_range.total is None:
            why = f"invalid Content-Range {answer.raw_content_range!r} for bytes=0-"
            return Verdict(Action.FALLBACK if ranged else Action.FATAL, why), None
        if answer.content_length is not None and answer.content_length != content_range.length:
            why = (f"Content-Length {answer.content_length} disagrees with Content-Range "
                   f"{answer.raw_content_range!r}")
            return Verdict(Action.FALLBACK if ranged else Action.FATAL, why), None
        remote = RemoteFile(content_range.total, True, answer.validators, answer.encoding)
        return Verdict(Action.ACCEPT, start=0, end=content_range.end + 1 if content_range.end is not None
                       else None), remote
    if answer.status == 200:
        size = None if answer.chunked else answer.content_length
        return Verdict(Action.ACCEPT, start=0, end=size), RemoteFile(size, False, answer.validators,
                                                                      answer.encoding)
    if answer.status == 416:
        if not ranged:
            return Verdict(Action.FATAL, "the server refused the whole file (HTTP 416)", status=416), None
        total = answer.content_range.total if answer.content_range is not None else None
        return Verdict(Action.REFUSED, "the server refused a range starting at 0 (HTTP 416)", total=total), None
    return _by_status(answer), None


@dataclass(frozen=True)
class RangeAsk:
    """One request for part of the file: ``Range: bytes=start-(end-1)``, with ``if_range`` if sent."""

    start: int
    end: int
    if_range: str | None = None
    data_from: int | None = None  # where the bytes to write begin (after an overlap to compare)


def judge_range(answer: Answer, ask: RangeAsk, remote: RemoteFile,
                known: Validators | None) -> Verdict:
    """SPEC rule 6: the answer to a ranged request, checked before any byte of it is written.

    ``known`` holds the validators this source gave before (None for a source
    not yet heard from). A 206 must start where asked, for the same total and
    encoding, with a Content-Length equal to its Content-Range, and with
    validators that do not contradict ``known``: anything else means the source
    changed or cannot be trusted with ranges.
    """
    if answer.status == 206:
        content_range = answer.content_range
        if content_range is None or content_range.start is None or content_range.end is None:
            return Verdict(Action.FALLBACK, f"invalid Content-Range {answer.raw_content_range!r}")
        if known is not None and known.contradicts(answer.validators):
            return Verdict(Action.CHANGED, "the remote file changed (a range came back with other validators)")
        if content_range.total != remote.size:
            return Verdict(Action.CHANGED, f"the remote size changed from {remote.size} to {content_range.total}")
        if content_range.start != ask.start:
            return Verdict(Action.FALLBACK, f"asked for bytes from {ask.start}, got a Content-Range from "
                                            f"{content_range.start}")
        if answer.content_length is not None and answer.content_length != content_range.length:
            return Verdict(Action.FALLBACK, f"Content-Length {answer.content_length} disagrees with "
                                            f"Content-Range {answer.raw_content_range!r}")
        if answer.encoding != remote.encoding:
            return Verdict(Action.FALLBACK, f"a range came back with Content-Encoding {answer.encoding!r}")
        if ask.data_from is not None and content_range.end + 1 <= ask.data_from:
            return Verdict(Action.FALLBACK, f"the server announced {content_range.total} bytes but sends "
                                            f"none from {ask.data_from}")
        if ask.if_range is not None and ask.if_range not in (answer.validators.etag, answer.validators.last_modified):
            # RFC 9110 13.1.5: a 206 to If-Range carries the validator that matched. One without it
            # proves nothing (a server ignoring If-Range): ask again without, the overlap as proof.
            return Verdict(Action.UNCONFIRMED, f"a range came back without the validator {ask.if_range}")
        return Verdict(Action.ACCEPT, start=content_range.start, end=min(content_range.end + 1, ask.end))
    if answer.status == 200:
        if ask.if_range is not None:
            if ask.if_range in (answer.validators.etag, answer.validators.last_modified):
                return Verdict(Action.UNCONFIRMED, "the server would not confirm If-Range "
                                                   f"{ask.if_range} that it still sends")
            return Verdict(Action.CHANGED, "the remote file changed (If-Range answered with the whole file)")
        if known is not None and known.contradicts(answer.validators):
            return Verdict(Action.CHANGED, "the remote file changed (the whole file came back with other "
                                           "validators)")
        return Verdict(Action.FALLBACK, "the server answered a range request with the whole file")
    if answer.status == 416:
        return Verdict(Action.REFUSED, "the server refused a range within the size it announced (HTTP 416)",
                       total=answer.content_range.total if answer.content_range is not None else None)
    return _by_status(answer)


_XML_MESSAGE = re.compile(rb"<Message>(.{1,400}?)</Message>", re.DOTALL)
_TITLE = re.compile(rb"<title>(.{1,400}?)</title>", re.DOTALL | re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
REASON_BYTES = 4096  # read at most this much of an error body


def reason_from_body(content_type: str | None, body: bytes, status: int = 0, phrase: str = "") -> str | None:
    """The server's own short explanation in an error body (S3's XML, a JSON message, plain text);
    None when it only repeats the status line."""
    kind = (content_type or "").split(";")[0].strip().lower()
    text: str | None = None
    if b"<Message>" in body:
        match = _XML_MESSAGE.search(body)
        text = html.unescape(match.group(1).decode("utf-8", "replace")) if match else None
    elif kind.endswith("json"):
        try:
            value = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            value = None
        text = _json_message(value)
    elif kind == "text/plain":
        lines = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
        text = lines[0] if lines else None
    elif kind == "text/html":
        match = _TITLE.search(body)
        text = html.unescape(match.group(1).decode("utf-8", "replace")) if match else None
    if not text:
        return None
    text = " ".join(_CONTROL.sub(" ", text).split())
    if text.lower().strip(".") in {f"{status} {phrase}".lower(), phrase.lower(), str(status)}:
        return None
    return text[:200] or None


def _json_message(value: object) -> str | None:
    if isinstance(value, dict):
        for key in ("message", "error_description", "detail", "error"):
            found = value.get(key)
            if isinstance(found, str):
                return found
            nested = _json_message(found)
            if nested:
                return nested
    return None
