"""Checksum strings (``sha256:HEX`` or aria2's ``sha-256=HEX``) and verifying a file against one."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass

from dlman.errors import InvalidInputError

ALGORITHMS = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32}
_FORM = re.compile(r"^\s*([A-Za-z0-9-]+)\s*[:=]\s*([0-9A-Fa-f]+)\s*$")


@dataclass(frozen=True)
class Checksum:
    """An algorithm name as hashlib knows it and the expected lower-case hex digest."""

    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    def new_hash(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)


def parse_checksum(text: str) -> Checksum:
    """Accept ``sha256:HEX``, ``sha-256=HEX`` (any case); refuse unknown algorithms and bad lengths."""
    match = _FORM.match(text or "")
    if not match:
        raise InvalidInputError(f"invalid checksum {text!r}: expected ALGO:HEX, e.g. sha256:9f86…")
    algorithm = match.group(1).lower().replace("-", "")
    digest = match.group(2).lower()
    if algorithm not in ALGORITHMS:
        raise InvalidInputError(
            f"invalid checksum {text!r}: unknown algorithm {match.group(1)!r} "
            f"(use one of {', '.join(ALGORITHMS)})"
        )
    if len(digest) != ALGORITHMS[algorithm]:
        raise InvalidInputError(
            f"invalid checksum {text!r}: a {algorithm} digest has {ALGORITHMS[algorithm]} hex digits, "
            f"not {len(digest)}"
        )
    return Checksum(algorithm, digest)


class DigestStopped(Exception):
    """``file_digest`` was asked to stop before the end of the file."""


def file_digest(path: str, algorithm: str, block_size: int = 1 << 20,
                stop: threading.Event | None = None) -> str:
    """Hex digest of a file, read in large blocks (run it off the event loop).

    ``stop`` is checked between blocks, so a caller that is cancelled (Ctrl-C
    during the verification of a large file) need not wait for the whole file.
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(block_size)
        view = memoryview(buffer)
        while True:
            if stop is not None and stop.is_set():
                raise DigestStopped(path)
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()
