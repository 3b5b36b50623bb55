"""File-name rules (SPEC rule 8): where a download may be written, and never outside it."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dlman.httpheaders import parse_content_disposition

DEFAULT_NAME = "index.html"
PART_SUFFIX = ".part"
STATE_SUFFIX = ".part.state"
_MAX_NAME_BYTES = 240  # leaves room for ".part.state" under the usual 255-byte limit
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f/\\]')
_RESERVED = re.compile(r"\.part(\.state(\.tmp)?|\.new)?$", re.IGNORECASE)


def reserved(name: str) -> bool:
    """Whether ``name`` is one dlman keeps beside a destination for itself (``NAME.part``, its state,
    the state's temp file): a download under such a name would be taken for another's partial data."""
    return bool(_RESERVED.search(name))


def sanitise_name(name: str | None) -> str | None:
    """A single safe path component from a server- or user-supplied name, or None if nothing is left.

    Keeps only the last path component (either slash), drops control characters,
    refuses ``.`` and ``..`` and leading dots that would hide the file, and trims
    to a length every common filesystem accepts.
    """
    if not name:
        return None
    name = name.encode("utf-8", "ignore").decode("utf-8")  # lone surrogates from an exotic charset
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = _trim(_UNSAFE.sub("", name))
    encoded = name.encode("utf-8")
    if len(encoded) > _MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext.encode()) < 16 else ""
        budget = _MAX_NAME_BYTES - len(keep.encode()) - (1 if keep else 0)
        head = _trim((stem if keep else name).encode("utf-8")[:budget].decode("utf-8", "ignore"))
        name = f"{head}.{keep}" if keep and head else head
    if reserved(name):
        name += "_"
    return name or None


def _trim(name: str) -> str:
    """Strip spaces and dots at both ends until none are left (so sanitising twice changes nothing)."""
    while True:
        trimmed = name.strip().strip(".")
        if trimmed == name:
            return name
        name = trimmed


def name_from_url(url: str) -> str | None:
    """The last segment of the URL path, percent-decoded."""
    path = urlsplit(url).path
    segment = path.rsplit("/", 1)[-1]
    return unquote(segment) if segment else None


def choose_name(url: str, content_disposition: str | None) -> str:
    """Content-Disposition (``filename*`` first), else the URL's last segment, else index.html."""
    for candidate in (parse_content_disposition(content_disposition), name_from_url(url)):
        safe = sanitise_name(candidate)
        if safe:
            return safe
    return DEFAULT_NAME


def contained(directory: Path, name: str) -> Path:
    """``directory / name``, guaranteed to stay inside ``directory`` (ValueError otherwise)."""
    base = Path(os.path.abspath(directory))
    target = Path(os.path.abspath(base / name))
    if target.parent != base and base not in target.parents:
        raise ValueError(f"{name!r} leaves {base}")
    return target


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + STATE_SUFFIX)
