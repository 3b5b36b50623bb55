"""The file side of a download: ``NAME.part``, ``NAME.part.state`` and the final rename.

One transfer at a time owns a destination: it holds an exclusive lock on the
open ``NAME.part`` for its whole life, across processes, so a second job for
the same file fails clearly instead of interleaving its bytes. Nothing here
follows a symbolic link planted at ``NAME.part`` or its state files, and the
finished file is published without clobbering a destination that appeared
meanwhile (unless asked to overwrite).

Every blocking call runs off the event loop through aiofiles. The write order is
the crash-safe one (data, fsync data, state to a temp file, fsync, rename over
the old state, fsync the directory), so a state file never claims bytes that a
kill -9 or a power cut could have lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar, Union

import aiofiles.os

from dlman.asynctools import uninterrupted
from dlman.checksum import Checksum, DigestStopped
from dlman.errors import ChecksumError, DestinationBusyError, DestinationExistsError, DownloadError, StorageError
from dlman.naming import part_path, state_path
from dlman.state import ResumeState, StateError

_DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system", errno.ELOOP: "it is a symbolic link (not followed)"}
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # some NFS and FUSE mounts
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}
log = logging.getLogger("dlman")
MAX_STATE_BYTES = 1 << 20
T = TypeVar("T")
NOFOLLOW = os.O_NOFOLLOW  # on every open of NAME.part and its state files


def storage_error(exc: OSError, path: Path) -> StorageError:
    """One clear sentence naming the path, for disk full and permission errors alike."""
    why = _DISK_ERRNOS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StorageError(f"cannot write {path}: {why}", path=str(path))


#: What a positioned write takes: the receiver's buffer views as well as plain bytes.
Chunks = Sequence[Union[bytes, bytearray, memoryview]]


class _Busy(Exception):
    pass


def _pwritev_all(fd: int, chunks: Chunks, offset: int) -> None:
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
    """Replace the state file atomically; the temp file is created fresh, never through a link."""
    temp = _temp_state(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # a leftover of a kill mid-save, or something planted: ours to remove
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | os.O_CLOEXEC, 0o600)
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


def _lock_part(path: Path, dest: Path) -> tuple[int, bool]:
    """Open ``path`` (created if missing) and lock it exclusively: (fd, created).

    The lock is taken without waiting (``_Busy`` when another transfer holds it).
    The name may have been unlinked or replaced between open and lock (a finished
    transfer renames its part away), so the lock counts only when the name still
    leads to the locked file. A part that is already the destination's inode
    (a kill between publishing and unlinking) is cleared away first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # each round lost a race with another process's rename or unlink
        created = False
        try:
            fd = os.open(path, os.O_RDWR | NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDWR | NOFOLLOW | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Busy() from None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                log.warning("%s: this file system cannot lock files: another transfer of the same file "
                            "would not be kept out", path)
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(info, current):
                with contextlib.suppress(FileNotFoundError):
                    if os.path.samestat(info, os.lstat(dest)):
                        for leftover in (path, state_path(dest)):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(leftover)
                        os.close(fd)
                        continue
                return fd, created
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "it keeps being replaced while being opened")


def _truncate(fd: int, state: Path) -> None:
    os.ftruncate(fd, 0)
    for path in (state, _temp_state(state)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _flush_to_size(fd: int, size: int | None) -> int:
    """Cut data past ``size`` (left by an older, longer file), flush; the size on disk."""
    actual = os.fstat(fd).st_size
    if size is not None and actual > size:
        os.ftruncate(fd, size)
        actual = size
    os.fsync(fd)
    return actual


def _fd_digest(fd: int, algorithm: str, stop: threading.Event, block_size: int = 1 << 20) -> str:
    """Digest of the open part file (read through the locked descriptor, not its name)."""
    digest = hashlib.new(algorithm)
    buffer = bytearray(block_size)
    view = memoryview(buffer)
    offset = 0
    while True:
        if stop.is_set():
            raise DigestStopped()
        count = os.preadv(fd, [buffer], offset)
        if not count:
            return digest.hexdigest()
        digest.update(view[:count])
        offset += count


def _same_content(fd: int, other: Path, stop: threading.Event, block_size: int = 1 << 20) -> bool:
    with open(other, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size != os.fstat(fd).st_size:
            return False
        offset = 0
        while True:
            if stop.is_set():
                raise DigestStopped()
            mine = os.pread(fd, block_size, offset)
            theirs = handle.read(block_size)
            if mine != theirs:
                return False
            if not mine:
                return True
            offset += len(mine)


def _still_ours(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (nobody renamed another file over it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _link_open_file(fd: int, part: Path, target: Path) -> None:
    """Give ``target`` to the open file itself: through ``/proc/self/fd`` the link is made to the
    locked inode, whatever ``NAME.part`` names now; elsewhere, by name once it is checked."""
    try:
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EPERM, errno.EINVAL, errno.EACCES):
            raise  # ENOENT: no procfs; EPERM/EINVAL: not allowed here: the name it is
    if not _still_ours(fd, part):
        raise OSError(errno.ESTALE, "it was replaced by another file while downloading")
    os.link(part, target, follow_symlinks=False)


def _publish(fd: int, part: Path, dest: Path, leftovers: tuple[Path, ...], overwrite: bool) -> None:
    """Put the verified file under the destination name atomically, then drop the state, then flush
    the directory.

    The name goes to the locked file (``_link_open_file``), never to whatever ``NAME.part`` names
    by then. Without ``overwrite`` the link appears only if nothing holds the name yet
    (FileExistsError otherwise); with it, a fresh link is renamed over the destination. Where hard
    links are not supported, the part is renamed (after checking it is still ours, and that the
    destination is free unless ``overwrite``).
    """
    staged = part.with_name(part.name + ".new") if overwrite else dest
    try:
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        _link_open_file(fd, part, staged)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if not _still_ours(fd, part):
            raise OSError(errno.ESTALE, "it was replaced by another file while downloading") from None
        if not overwrite and os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "exists", str(dest)) from None
        os.replace(part, dest)
    else:
        if overwrite:
            os.replace(staged, dest)
        if _still_ours(fd, part):
            os.unlink(part)
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    _fsync_dir(dest.parent)


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_partial(dest: Path) -> bool:
    """Delete ``NAME.part`` and its state files, unless a transfer holds the destination (False then).

    The queue's ``remove --delete`` goes through here: partial data a running transfer owns
    (in any process: its part file is locked) is never pulled from under it.
    """
    part, state = part_path(dest), state_path(dest)
    try:
        fd = os.open(part, os.O_RDWR | NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError:  # a symlink or something else planted there: its name goes, not its target
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
        for path in (part, state, _temp_state(state)):
            if path == part and fd is not None and not _still_ours(fd, part):
                continue  # a new transfer's part took the name meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
    finally:
        if fd is not None:
            os.close(fd)


# One executor hop per step: many small files make the hop count matter.
_lock = aiofiles.os.wrap(_lock_part)
_truncate_part = aiofiles.os.wrap(_truncate)
_flush = aiofiles.os.wrap(_flush_to_size)
_rename_into_place = aiofiles.os.wrap(_publish)
_remove_files = aiofiles.os.wrap(_remove)
_pwritev = aiofiles.os.wrap(_pwritev_all)
_pread = aiofiles.os.wrap(_pread_all)
_fsync = aiofiles.os.wrap(os.fsync)
_save_state = aiofiles.os.wrap(_write_state)


async def stoppable(function: functools.partial[T]) -> T:
    """Run a long digest in a thread; a cancelled caller stops it within a block, not at the end."""
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(function, stop=stop))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([future])  # the thread ends within one block
        if not future.cancelled():
            future.exception()  # DigestStopped: expected, and retrieved so it is not reported
        raise


class PartFile:
    """``NAME.part`` with its state file, owned by one transfer at a time (see ``lock``)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.part = part_path(dest)
        self.state_file = state_path(dest)
        self._fd: int | None = None
        self._created = False
        # Created by our lock, no state file found beside it, nothing written since: empty, nothing to clear.
        self._pristine = False
        self._saving = asyncio.Lock()  # one state write at a time: they share the temp file
        self.published = False  # the destination name is the file's: nothing of it is partial any more

    @property
    def locked(self) -> bool:
        return self._fd is not None

    async def lock(self) -> None:
        """Own the destination: open ``NAME.part`` and hold its lock until ``release``.

        A cancel while the opening thread runs waits for it and gives the lock back, so that
        no descriptor is left holding the destination for the rest of the process.
        """
        async def open_and_keep() -> None:
            self._fd, self._created = await _lock(self.part, self.dest)

        try:
            await uninterrupted(open_and_keep())
        except asyncio.CancelledError:
            self.release()
            raise
        except _Busy:
            raise DestinationBusyError(f"{self.dest} is being downloaded by another transfer; "
                                       "try again when it has finished", path=str(self.dest)) from None
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    def release(self) -> None:
        """Give up the destination; a part created by this transfer that stayed empty goes too."""
        if self._fd is None:
            return
        try:
            if self._created and os.fstat(self._fd).st_size == 0 and not os.path.lexists(self.state_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.part)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    # -- state -------------------------------------------------------------------
    def read_state(self) -> bytes | None:
        """The raw state file, None when there is none; StateError for one not to be trusted."""
        try:
            fd = os.open(self.state_file, os.O_RDONLY | NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self._pristine = self._created and self._fd is not None and os.fstat(self._fd).st_size == 0
            return None
        except OSError as exc:
            self._pristine = False
            if exc.errno == errno.ELOOP:
                raise StateError("the state file is a symbolic link") from None
            raise storage_error(exc, self.state_file) from None
        self._pristine = False
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise StateError("the state file is not a regular file")
            data = handle.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            raise StateError("the state file is too large")
        return data

    async def save_state(self, state: ResumeState) -> None:
        """Flush the data, then atomically replace the state (the crash-safe order)."""
        assert self._fd is not None
        async with self._saving:
            self._pristine = False
            try:
                await _fsync(self._fd)
                await _save_state(self.state_file, state.encode())
            except OSError as exc:
                raise storage_error(exc, self.state_file) from None

    # -- data --------------------------------------------------------------------
    async def truncate(self) -> None:
        """Start over: no data, no state (the lock is kept)."""
        assert self._fd is not None
        if self._pristine:
            return  # nothing to clear: one thread hop per file saved
        try:
            await _truncate_part(self._fd, self.state_file)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    def size_on_disk(self) -> int:
        assert self._fd is not None
        return os.fstat(self._fd).st_size

    async def write(self, offset: int, chunks: Chunks) -> None:
        assert self._fd is not None
        try:
            self._pristine = False
            await _pwritev(self._fd, chunks, offset)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    def write_now(self, offset: int, chunks: Chunks) -> None:
        """Blocking write, for the last buffer of a connection being cancelled."""
        assert self._fd is not None
        try:
            self._pristine = False
            _pwritev_all(self._fd, chunks, offset)
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    async def read(self, offset: int, length: int) -> bytes:
        assert self._fd is not None
        data: bytes = await _pread(self._fd, length, offset)
        return data

    async def same_as(self, other: Path) -> bool:
        """Whether the part holds exactly the bytes of ``other`` (an existing destination)."""
        assert self._fd is not None
        try:
            return await stoppable(functools.partial(_same_content, self._fd, other))
        except OSError as exc:
            raise storage_error(exc, other) from None

    async def delete(self) -> None:
        """Remove partial data and state (a bad checksum); the lock is held until ``release``."""
        try:
            await _remove_files((self.part, self.state_file, _temp_state(self.state_file)))
        except OSError as exc:
            raise storage_error(exc, self.part) from None

    async def finish(self, size: int | None, checksum: Checksum | None, url: str, *,
                     overwrite: bool, source: str = "given") -> int:
        """Verify, flush and atomically publish the part file under its name; returns the size.

        The destination name appears only for a complete, verified, durable file.
        """
        assert self._fd is not None
        try:
            actual: int = await _flush(self._fd, size)
        except OSError as exc:
            raise storage_error(exc, self.part) from None
        if size is not None and actual != size:
            raise DownloadError(f"{url}: got {actual} bytes of {size}; the data is kept for a resume",
                                url=url, path=str(self.part))
        if checksum is not None:
            try:
                digest = await stoppable(functools.partial(_fd_digest, self._fd, checksum.algorithm))
            except OSError as exc:
                raise storage_error(exc, self.part) from None
            if digest != checksum.hexdigest:
                await self.delete()
                origin = "" if source == "given" else f" by the server's {source}"
                raise ChecksumError(
                    f"{self.dest}: {checksum.algorithm} checksum mismatch (expected{origin} "
                    f"{checksum.hexdigest}, got {digest}); the bad data was deleted",
                    url=url, path=str(self.dest))
        async def publish() -> None:
            await _rename_into_place(self._fd, self.part, self.dest,
                                     (self.state_file, _temp_state(self.state_file)), overwrite)
            self.published = True

        try:
            await uninterrupted(publish())  # a cancel now waits for the rename, then goes on
        except FileExistsError:
            raise DestinationExistsError(
                f"{self.dest} appeared while downloading; the complete data is kept in {self.part}; "
                "pass --overwrite to replace it", url=url, path=str(self.dest)) from None
        except OSError as exc:
            raise storage_error(exc, self.dest) from None
        self._created = False
        return actual
