"""dlman: resumable, segmented downloads — an engine, a persistent queue and a command line.

The public names are imported on first use (module ``__getattr__``), so that ``dlman --version``
and ``dlman --help`` start without loading httpx, asyncio and the engine.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The engine logs; it never prints. Without this, Python's last-resort handler would
# write the engine's warnings to an embedding program's stderr.
logging.getLogger("dlman").addHandler(logging.NullHandler())

_ERRORS = ("ChecksumError", "DestinationBusyError", "DestinationExistsError", "DownloadError", "HTTPStatusError",
           "InvalidInputError", "NetworkError", "ProtocolError", "RemoteChangedError", "StorageError")
_WHERE = {
    **{name: "dlman.errors" for name in _ERRORS},
    "Engine": "dlman.engine",
    "download": "dlman.engine",
    "Job": "dlman.queue",
    "Queue": "dlman.queue",
    "DownloadResult": "dlman.result",
    "Progress": "dlman.result",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dlman' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = sorted([*_WHERE, "__version__"])
