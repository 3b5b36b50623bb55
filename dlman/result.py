"""What a download hands back: progress snapshots while it runs, a result when it ends.

A module of its own so that the queue, the display and embedding programs can
name these types without importing the transfer machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress callbacks: bytes received so far, of ``total`` when known.

    Received bytes are written within a fraction of a second; after a stop they
    are all on disk, so the last snapshot of a cancelled download is exact.
    """

    path: Path | None
    downloaded: int
    total: int | None
    connections: int


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: the verified file and its size."""

    path: Path
    size: int
    url: str
    skipped: bool = False
    checksum: str | None = None          # what the file was verified against ("sha256:HEX"), if anything
    checksum_source: str | None = None   # "given", or the server's header it came from
