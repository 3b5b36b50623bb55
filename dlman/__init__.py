"""dlman: resumable, segmented downloads — an engine, a persistent queue and a command line."""

from __future__ import annotations

import logging

from dlman.engine import Engine, download
from dlman.errors import (
    ChecksumError,
    DestinationBusyError,
    DestinationExistsError,
    DownloadError,
    HTTPStatusError,
    InvalidInputError,
    NetworkError,
    ProtocolError,
    RemoteChangedError,
    StorageError,
)
from dlman.queue import Job, Queue
from dlman.result import DownloadResult, Progress

__version__ = "0.1.0"

# The engine logs; it never prints. Without this, Python's last-resort handler would
# write the engine's warnings to an embedding program's stderr.
logging.getLogger("dlman").addHandler(logging.NullHandler())

__all__ = [
    "ChecksumError",
    "DestinationBusyError",
    "DestinationExistsError",
    "DownloadError",
    "DownloadResult",
    "Engine",
    "Progress",
    "HTTPStatusError",
    "InvalidInputError",
    "Job",
    "NetworkError",
    "ProtocolError",
    "Queue",
    "RemoteChangedError",
    "StorageError",
    "__version__",
    "download",
]
