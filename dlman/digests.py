"""The whole file's digest when the server gives one (pure): asked for, read, and chosen.

When the user gives no checksum, dlman asks for one (``Want-Repr-Digest``, RFC 9530, and
``Want-Digest``, RFC 3230) and reads what servers send: ``Repr-Digest`` and ``Digest`` (about the
whole file, so on a 206 as well as a 200), ``Content-Digest`` (about this body: on a full,
unencoded 200 only), and the vendor forms that carry a whole-object hash: Google Cloud Storage's
``x-goog-hash`` (md5), S3's ``x-amz-checksum-sha256``/``-sha1`` (not the composite checksums of
multipart uploads), and Hugging Face's ``X-Linked-Etag`` when it is a 64-hex sha256. The
strongest algorithm found is the one verified.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from dlman.checksum import ALGORITHMS, Checksum

WANT_HEADERS = {
    "Want-Repr-Digest": "sha-512=3, sha-256=10",
    "Want-Digest": "SHA-256, SHA-512;q=0.9, MD5;q=0.1",
}
STRENGTH = ("sha512", "sha256", "sha1", "md5")  # strongest first
_NAMES = {"sha-512": "sha512", "sha-256": "sha256", "sha": "sha1", "sha-1": "sha1", "md5": "md5",
          "sha512": "sha512", "sha256": "sha256", "sha1": "sha1"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _decode(value: str, algorithm: str) -> str | None:
    """A digest sent as base64 (or, by some servers, as hex) as lower-case hex, if its length fits."""
    value = value.strip().strip('"').strip(":")
    want = ALGORITHMS[algorithm]
    if len(value) == want and _HEX.match(value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    text = raw.hex()
    return text if len(text) == want else None


def _structured(value: str) -> dict[str, str]:
    """An RFC 8941 dictionary of byte sequences (``sha-256=:BASE64:``), parameters dropped."""
    found = {}
    for member in value.split(","):
        key, sep, item = member.partition("=")
        item = item.split(";", 1)[0].strip()
        if sep and item.startswith(":") and item.endswith(":") and len(item) > 2:
            found[key.strip().lower()] = item[1:-1]
    return found


def _rfc3230(value: str) -> dict[str, str]:
    """``SHA-256=BASE64, MD5=BASE64`` (algorithm names in any case)."""
    found = {}
    for member in value.split(","):
        key, sep, item = member.partition("=")
        if sep:
            found[key.strip().lower()] = item.strip()
    return found


def candidates(headers: Mapping[str, str], *, whole_body: bool) -> list[tuple[Checksum, str]]:
    """Every whole-file digest in ``headers``, each with the header it came from.

    ``whole_body``: the response carries the whole file unencoded (a 200 without
    Content-Encoding), so a digest of the content is one of the file too.
    """
    found: list[tuple[Checksum, str]] = []

    def add(name: str, value: str, source: str) -> None:
        algorithm = _NAMES.get(name.lower())
        if algorithm is None:
            return
        digest = _decode(value, algorithm)
        if digest is not None:
            found.append((Checksum(algorithm, digest), source))

    for header, parse in (("repr-digest", _structured), ("digest", _rfc3230)):
        for name, value in parse(headers.get(header, "")).items():
            add(name, value, header)
    if whole_body:
        for name, value in _structured(headers.get("content-digest", "")).items():
            add(name, value, "content-digest")
    for item in (headers.get("x-goog-hash") or "").split(","):
        name, _, value = item.partition("=")
        if name.strip().lower() == "md5":
            add("md5", value, "x-goog-hash")
    for name in ("sha256", "sha1"):
        amz = headers.get(f"x-amz-checksum-{name}")
        if amz and "-" not in amz:  # "...-N": a checksum of part checksums, not of the file
            add(name, amz, f"x-amz-checksum-{name}")
    linked = (headers.get("x-linked-etag") or "").strip().strip('"')
    if len(linked) == 64 and _HEX.match(linked):
        add("sha256", linked, "x-linked-etag")
    return found


def strongest(found: list[tuple[Checksum, str]]) -> tuple[Checksum, str] | None:
    """The digest to verify: the strongest algorithm; None when nothing usable was sent."""
    ranked = sorted(found, key=lambda item: STRENGTH.index(item[0].algorithm))
    return ranked[0] if ranked else None


def disagreement(given: Checksum, found: list[tuple[Checksum, str]]) -> str | None:
    """Why the user's checksum and the server's digest cannot both hold (same algorithm, other value)."""
    for digest, source in found:
        if digest.algorithm == given.algorithm and digest.hexdigest != given.hexdigest:
            return (f"the server's {source} says {digest.algorithm} {digest.hexdigest}, "
                    f"the checksum given says {given.hexdigest}")
    return None
