"""The exception tree: everything dlman raises for a failed download is a DownloadError.

Callers catch ``DownloadError`` for "this download did not produce a file"; the
subclasses let them tell why without parsing messages.
"""

from __future__ import annotations


class DownloadError(Exception):
    """A download failed; the message is one sentence naming the URL or file."""

    def __init__(self, message: str, *, url: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.path = path


class InvalidInputError(DownloadError, ValueError):
    """Bad input from the caller (URL, option, checksum syntax): nothing was attempted."""


class ChecksumError(DownloadError):
    """The finished data does not match the checksum given; the bad data was deleted."""


class HTTPStatusError(DownloadError):
    """The server answered with a status that retrying cannot fix (most 4xx)."""

    def __init__(self, message: str, *, status: int, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.status = status


class DestinationExistsError(DownloadError):
    """The destination exists and differs from the remote file; ``overwrite`` was not given."""


class DestinationBusyError(DownloadError):
    """Another transfer (in this process or another) is writing the same destination."""


class StorageError(DownloadError):
    """Writing to disk failed (disk full, permission denied); partial data is kept."""


class NetworkError(DownloadError):
    """The server could not be reached or kept failing after every retry."""


class ProtocolError(DownloadError):
    """The server's answers cannot be trusted (inconsistent ranges, sizes or encodings)."""


class RemoteChangedError(DownloadError):
    """The remote file changed while downloading and kept changing on every restart."""
