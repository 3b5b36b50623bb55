"""Resume state (``NAME.part.state``): what is missing and what identifies the remote file.

Encoding and decoding are pure; the loader refuses anything inconsistent with a
``StateError`` so that a truncated or corrupt file leads to a clean restart,
never to trusting bytes that are not there.

The file's identity is its size and the validators each source gave for it,
keyed by :func:`source_key` (origin and path, without credentials or query), not
the URL it was asked for: a fresh presigned URL for the same object, or a
redirector that picks another mirror, can still resume the bytes on disk.
Version 1 states (one URL, one validator) are read as version 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.options import is_credential_parameter
from dlman.remote import Validators
from dlman.segments import complement, normalise

STATE_VERSION = 2


class StateError(ValueError):
    """The state file cannot be trusted."""


_GRANT_PARAMETERS = frozenset({
    "expires", "x-amz-date", "x-amz-expires", "x-amz-algorithm", "x-amz-signedheaders",
    "x-goog-date", "x-goog-expires", "x-goog-algorithm", "x-goog-signedheaders",
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sr", "skoid", "sktid", "skt", "ske", "sks", "skv",
})
"""Query parameters that describe a signature's grant (when, how, by whom) and so differ between two
signed URLs of one object, beside the credential parameters themselves."""


def source_key(url: str) -> str:
    """What names one server's copy of a file: scheme, host, port, path and the query's other
    parameters (``dl.php?id=1`` and ``?id=2`` are two files), without user, fragment, or anything a
    signature adds (a fresh presigned URL for the same object is the same source)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url.split("#", 1)[0]
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    kept = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if not is_credential_parameter(name) and name.lower() not in _GRANT_PARAMETERS]
    query = f"?{urlencode(sorted(kept))}" if kept else ""
    return f"{parts.scheme.lower()}://{netloc}{parts.path or '/'}{query}"


@dataclass
class ResumeState:
    """Everything a later attempt needs to ask only for the missing bytes."""

    url: str                  # the first URL, credentials masked: for people reading the file
    size: int
    missing: list[tuple[int, int]] = field(default_factory=list)
    sources: dict[str, Validators] = field(default_factory=dict)
    reference: str | None = None   # the source key whose first answer described the file
    digest: str | None = None      # the server's digest of the whole file ("sha256:HEX"), to verify
    digest_source: str | None = None   # the header it came from
    encoding: str | None = None    # the Content-Encoding the bytes were served in (None: identity)

    @property
    def downloaded(self) -> int:
        return self.size - sum(b - a for a, b in self.missing)

    def written(self) -> list[tuple[int, int]]:
        """The complement of ``missing``: the byte ranges this state claims are on disk."""
        return complement(self.missing, self.size)

    def encode(self) -> bytes:
        return json.dumps({
            "version": STATE_VERSION,
            "url": self.url,
            "size": self.size,
            "missing": [list(r) for r in self.missing],
            "reference": self.reference,
            "sources": {key: _encode_validators(v) for key, v in self.sources.items()},
            "digest": self.digest,
            "digest_source": self.digest_source,
            "encoding": self.encoding,
        }, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> "ResumeState":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
            raise StateError(f"unreadable state: {str(exc)[:100]}") from None
        version = raw.get("version") if isinstance(raw, dict) else None
        if type(version) is not int or version not in (1, STATE_VERSION):
            raise StateError("unknown state format")
        url, size, missing = raw.get("url"), raw.get("size"), raw.get("missing")
        if not isinstance(url, str):
            raise StateError("state lacks url")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StateError("state has a bad size")
        if not isinstance(missing, list):
            raise StateError("state has no usable progress")
        intervals = _decode_missing(missing, size)
        if version == 1:
            if raw.get("ranges") is not True:
                raise StateError("state of a download without ranges")
            validators = _decode_validators({"etag": raw.get("etag"), "last_modified": raw.get("last_modified"),
                                             "strong": False})
            key = source_key(url)
            return cls(url, size, intervals, {key: validators}, key)
        sources = raw.get("sources")
        reference = raw.get("reference")
        if not isinstance(sources, dict) or not all(isinstance(k, str) for k in sources):
            raise StateError("state has bad sources")
        if reference is not None and not isinstance(reference, str):
            raise StateError("state has a bad reference")
        digest, digest_source = raw.get("digest"), raw.get("digest_source")
        if digest is not None:
            if not isinstance(digest, str):
                raise StateError("state has a bad digest")
            try:
                digest = str(parse_checksum(digest))
            except InvalidInputError:
                raise StateError("state has a bad digest") from None
        if digest_source is not None and not isinstance(digest_source, str):
            raise StateError("state has a bad digest source")
        encoding = raw.get("encoding")
        if encoding is not None and not isinstance(encoding, str):
            raise StateError("state has a bad encoding")
        return cls(url, size, intervals, {k: _decode_validators(v) for k, v in sources.items()}, reference,
                   digest, digest_source, encoding)


def _decode_missing(missing: list[object], size: int) -> list[tuple[int, int]]:
    intervals: list[tuple[int, int]] = []
    for item in missing:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
                or not 0 <= item[0] < item[1] <= size):
            raise StateError("state has a bad range")
        intervals.append((item[0], item[1]))
    if normalise(intervals, size) != intervals:
        raise StateError("state ranges overlap or are out of order")
    return intervals


def _encode_validators(validators: Validators) -> dict[str, object]:
    return {"etag": validators.etag, "last_modified": validators.last_modified,
            "strong": validators.date_is_strong}


def _decode_validators(raw: object) -> Validators:
    if not isinstance(raw, dict):
        raise StateError("state has a bad validator")
    etag, modified, strong = raw.get("etag"), raw.get("last_modified"), raw.get("strong", False)
    if not all(v is None or isinstance(v, str) for v in (etag, modified)) or not isinstance(strong, bool):
        raise StateError("state has a bad validator")
    return Validators(etag, modified, strong)
