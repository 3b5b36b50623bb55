"""Where a download asked for over the network may be written: inside one of the download roots.

``dir`` may be relative (to the first root) or absolute; ``out`` is a file name relative to
``dir`` (sub-directories allowed, as in aria2). Both are resolved through the symlinks that
exist now, and the result must still lie inside a root: a symlink in a root that points out of
it leads nowhere. The engine then never follows a symlink planted at the file itself
(``NAME.part`` is opened without following one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dlman.errors import InvalidInputError
from dlman.manifest import check_out
from dlman.options import check_path_text


class OutsideRoots(InvalidInputError):
    """A ``dir`` or ``out`` that would write outside every download root."""


def inside(path: str, root: str) -> bool:
    """Whether the real path ``path`` is ``root`` or below it (both absolute and real)."""
    return os.path.commonpath([path, root]) == root


def _root_of(path: str, roots: Sequence[str]) -> str | None:
    return next((root for root in roots if inside(path, root)), None)


def place(roots: Sequence[str], directory: str | None, out: str | None) -> tuple[str, str | None]:
    """The real directory to download into and the normalised ``out`` (or OutsideRoots)."""
    if not roots:
        raise OutsideRoots("no download root is configured")
    if directory is None or not directory.strip():
        wanted = roots[0]
    else:
        try:
            check_path_text(directory, "dir")  # before expanduser, which cannot take it either
        except InvalidInputError as error:
            raise OutsideRoots(str(error)) from None
        text = os.path.expanduser(directory) if directory.startswith("~") else directory
        wanted = os.path.join(roots[0], text)  # an absolute dir replaces the root here
    real = os.path.realpath(wanted)
    root = _root_of(real, roots)
    if root is None:
        raise OutsideRoots(f"dir {directory!r} is outside the download roots ({', '.join(roots)})")
    if out is None or out == "":
        return real, None
    try:
        name = check_out(check_path_text(out, "out"))
    except InvalidInputError as error:
        raise OutsideRoots(str(error)) from None
    target = os.path.realpath(os.path.join(real, name))
    if not inside(target, root) or target == real:
        raise OutsideRoots(f"out {out!r} leads outside the download root {root}")
    return real, os.path.relpath(target, real)
