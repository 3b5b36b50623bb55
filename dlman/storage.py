"""The file side of a download: ``NAME.part``, ``NAME.part.state`` and the final rename.

Every blocking call runs off the event loop through aiofiles. The write order is
the crash-safe one (data, fsync data, state to a temp file, fsync, rename over
the old state, fsync the directory), so a state file never claims bytes that a
kill -9 or a power cut could have lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import aiofiles.os

from dlman.checksum import Checksum, file_digest
from dlman.errors import ChecksumError, DownloadError, StorageError
from dlman.naming import part_path, state_path
from dlman.state import ResumeState

_DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system"}


def storage_error(exc: OSError, path: Path) -> StorageError:
    """One clear sentence naming the path, for disk full and permission errors alike."""
    why = _DISK_ERRNOS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StorageError(f"cannot write {path}: {why}", path=str(path))


def _pwritev_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write every byte of ``chunks`` at ``offset`` (pwritev may write less than asked)."""
    views = [memoryview(c) for c in chunks]
    while views:
        written = os.pwritev(fd, views[:1024], offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_state(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_state(path: Path, data: bytes) -> None:
    temp = _temp_state(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    pieces = []
    while length > 0:
        piece = os.pread(fd, length, offset)
        if not piece:
            break
        pieces.append(piece)
        length -= len(piece)
        offset += len(piece)
    return b"".join(pieces)


def _open_part(path: Path, flags: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, flags, 0o644)


def _flush_to_size(fd: int, size: int | None) -> int:
    """Cut data past ``size`` (left by an older, longer file), flush; the size on disk."""
    actual = os.fstat(fd).st_size
    if size is not None and actual > size:
        os.ftruncate(fd, size)
        actual = size
    os.fsync(fd)
    return actual


def _publish(part: Path, dest: Path, leftovers: tuple[Path, ...]) -> None:
    """The atomic rename into place, then the state files go, then the directory is flushed."""
    os.replace(part, dest)
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    _fsync_dir(dest.parent)


# One executor hop per step: many small files make the hop count matter.
_open = aiofiles.os.wrap(_open_part)
_flush = aiofiles.os.wrap(_flush_to_size)
_rename_into_place = aiofiles.os.wrap(_publish)
_pwritev = aiofiles.os.wrap(_pwritev_all)
_pread = aiofiles.os.wrap(_pread_all)
_fsync = aiofiles.os.wrap(os.fsync)
_save_state = aiofiles.os.wrap(_write_state)
_digest = aiofiles.os.wrap(file_digest)


class PartFile:
    """An open ``NAME.part`` with its state file, owned by one download at a time."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.part = part_path(dest)
        self.state_file = state_path(dest)
        self._fd: int | None = None

    # -- state -------------------------------------------------------------------
    def read_state(self) -> bytes | None:
        """The raw state file, or None when there is none."""
        try:
            return self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, self.state_file) from None

    async def save_state(self, state: ResumeState) -> None:
        """Flush the data, then atomically replace the state (the crash-safe order)."""
        try:
            if self._fd is not None:
                await _fsync(self._fd)
            await _save_state(self.state_file, state.encode())
        except OSError as exc:
            raise storage_error(exc, self.state_file) from None

    # -- data --------------------------------------------------------------------
    async def open(self, *, truncate: bool) -> None:
        """Open (creating) the part file; ``truncate`` discards earlier partial data."""
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        try:
            self._fd = await _open(self.part, flags)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    def size_on_disk(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    async def write(self, offset: int, chunks: list[bytes]) -> None:
        assert self._fd is not None
        try:
            await _pwritev(self._fd, chunks, offset)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    def write_now(self, offset: int, chunks: list[bytes]) -> None:
        """Blocking write, for the last buffer of a connection being cancelled."""
        assert self._fd is not None
        try:
            _pwritev_all(self._fd, chunks, offset)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    async def read(self, offset: int, length: int) -> bytes:
        assert self._fd is not None
        return await _pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def discard(self) -> None:
        """Remove partial data and state (restart or bad checksum)."""
        self.close()
        for path in (self.part, self.state_file, _temp_state(self.state_file)):
            try:
                await aiofiles.os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise storage_error(exc, path) from None

    async def finish(self, size: int | None, checksum: Checksum | None, url: str) -> int:
        """Verify, flush and atomically rename the part file into place; returns the size.

        The destination name appears only for a complete, verified, durable file.
        """
        assert self._fd is not None
        try:
            actual = await _flush(self._fd, size)
        except OSError as exc:
            raise storage_error(exc, self.part) from None
        if size is not None and actual != size:
            raise DownloadError(f"{url}: got {actual} bytes of {size}; the data is kept for a resume",
                                url=url, path=str(self.part))
        if checksum is not None:
            digest = await _digest(str(self.part), checksum.algorithm)
            if digest != checksum.hexdigest:
                await self.discard()
                raise ChecksumError(
                    f"{self.dest}: {checksum.algorithm} checksum mismatch (expected "
                    f"{checksum.hexdigest}, got {digest}); the bad data was deleted",
                    url=url, path=str(self.dest))
        self.close()
        try:
            await _rename_into_place(self.part, self.dest, (self.state_file, _temp_state(self.state_file)))
        except OSError as exc:
            raise storage_error(exc, self.dest) from None
        return actual
