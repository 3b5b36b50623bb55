"""dlman: resumable, segmented downloads — an engine, a persistent queue and a command line."""

from __future__ import annotations

from dlman.errors import (
    ChecksumError,
    DestinationExistsError,
    DownloadError,
    HTTPStatusError,
    InvalidInputError,
    NetworkError,
    ProtocolError,
    RemoteChangedError,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "DestinationExistsError",
    "DownloadError",
    "HTTPStatusError",
    "InvalidInputError",
    "NetworkError",
    "ProtocolError",
    "RemoteChangedError",
    "StorageError",
    "__version__",
]
