"""Resume state (``NAME.part.state``): what is missing and what identifies the remote file.

Encoding and decoding are pure; the loader refuses anything inconsistent with a
``StateError`` so that a truncated or corrupt file leads to a clean restart,
never to trusting bytes that are not there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dlman.segments import normalise

STATE_VERSION = 1


class StateError(ValueError):
    """The state file cannot be trusted."""


@dataclass
class ResumeState:
    """Everything a later attempt needs to ask only for the missing bytes."""

    url: str                  # credentials masked: the file may be read by others
    size: int | None
    etag: str | None = None
    last_modified: str | None = None
    ranges: bool = True
    missing: list[tuple[int, int]] = field(default_factory=list)

    @property
    def downloaded(self) -> int:
        if self.size is None:
            return 0
        return self.size - sum(b - a for a, b in self.missing)

    def written(self) -> list[tuple[int, int]]:
        """The complement of ``missing``: the byte ranges this state claims are on disk."""
        ranges, cursor = [], 0
        for start, end in self.missing:
            if start > cursor:
                ranges.append((cursor, start))
            cursor = end
        if self.size is not None and cursor < self.size:
            ranges.append((cursor, self.size))
        return ranges

    def encode(self) -> bytes:
        return json.dumps({
            "version": STATE_VERSION,
            "url": self.url,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "ranges": self.ranges,
            "missing": [list(r) for r in self.missing],
        }, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> "ResumeState":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
            raise StateError(f"unreadable state: {str(exc)[:100]}") from None
        version = raw.get("version") if isinstance(raw, dict) else None
        if type(version) is not int or version != STATE_VERSION:
            raise StateError("unknown state format")
        url, size = raw.get("url"), raw.get("size")
        etag, modified = raw.get("etag"), raw.get("last_modified")
        ranges, missing = raw.get("ranges"), raw.get("missing")
        if not isinstance(url, str) or not isinstance(ranges, bool):
            raise StateError("state lacks url or ranges")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise StateError("state has a bad size")
        for text in (etag, modified):
            if text is not None and not isinstance(text, str):
                raise StateError("state has a bad validator")
        if not isinstance(missing, list) or size is None:
            raise StateError("state has no usable progress")
        intervals: list[tuple[int, int]] = []
        for item in missing:
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
                    or not 0 <= item[0] < item[1] <= size):
                raise StateError("state has a bad range")
            intervals.append((item[0], item[1]))
        if normalise(intervals, size) != intervals:
            raise StateError("state ranges overlap or are out of order")
        return cls(url, size, etag, modified, ranges, intervals)
