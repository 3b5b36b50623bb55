"""Manifest files (``-i``): aria2's input-file format for the keys the SPEC names.

Pure: it takes text and returns entries, so the whole file can be checked (and
every problem reported as ``FILE:LINE: message``) before anything is enqueued.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.options import check_connections, check_url, mask_url, parse_header

KEYS = ("out", "dir", "checksum", "header", "connections", "split")
_ALIASES = {"split": "connections"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Entry:
    """One file to download: its mirror URLs and the options of its indented lines."""

    urls: tuple[str, ...]
    line: int
    out: str | None = None
    dir: str | None = None
    checksum: str | None = None
    headers: tuple[str, ...] = ()
    connections: int | None = None


class ManifestError(InvalidInputError):
    """Every problem found in a manifest, one ``FILE:LINE: message`` per line."""

    def __init__(self, problems: list[str], *, path: str | None = None) -> None:
        super().__init__("\n".join(problems), path=path)
        self.problems = tuple(problems)


def _inside(key: str, value: str) -> str:
    """A relative path that stays inside the directory it is relative to, normalised.

    Backslashes count as separators too, so a manifest written for Windows cannot
    climb out either.
    """
    if not value:
        raise InvalidInputError(f"{key} is empty")
    if _CONTROL.search(value):
        raise InvalidInputError(f"{key} {value!r} holds a control character")
    path = value.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidInputError(f"{key} {value!r} is absolute: it must stay inside its directory")
    if ".." in path.split("/"):
        raise InvalidInputError(f"{key} {value!r} leaves its directory")
    return posixpath.normpath(path)


def check_out(out: str) -> str:
    """An ``out`` name that stays inside its directory (sub-directories allowed, as in aria2)."""
    normal = _inside("out", out)
    if normal in (".", "") or out.replace("\\", "/").endswith("/"):
        raise InvalidInputError(f"out {out!r} names a directory, not a file")
    return normal


def check_dir(directory: str) -> str:
    """A ``dir`` that stays inside ``-d``: a manifest from elsewhere must not write anywhere it likes."""
    return _inside("dir", directory)


def _parse_option(key: str, value: str, entry: dict, seen: set[str]) -> None:
    """Apply one ``key=value`` line to the entry being built; raise InvalidInputError if bad."""
    if key not in KEYS:
        raise InvalidInputError(f"unknown option {key!r} (known: {', '.join(KEYS)})")
    name = _ALIASES.get(key, key)
    if name != "header" and name in seen:
        raise InvalidInputError(f"option {key!r} given twice for the same entry")
    seen.add(name)
    if name == "out":
        entry["out"] = check_out(value)
    elif name == "dir":
        entry["dir"] = check_dir(value)
    elif name == "checksum":
        entry["checksum"] = str(parse_checksum(value))
    elif name == "header":
        header_name, header_value = parse_header(value)
        entry["headers"].append(f"{header_name}: {header_value}")
    else:
        try:
            number = int(value)
        except ValueError:
            raise InvalidInputError(f"invalid {key} {value!r}: expected a whole number") from None
        entry["connections"] = check_connections(number)


def _target(entry: Entry) -> str:
    """What the entry writes, for spotting two entries writing the same file.

    Without ``out`` the name comes from the server, so only the same URL twice in
    the same directory is a sure collision.
    """
    directory = posixpath.normpath((entry.dir or ".").replace("\\", "/"))
    if entry.out is not None:
        return f"{directory}\0file\0{entry.out}"
    return f"{directory}\0url\0{entry.urls[0] if entry.urls else ''}"


def parse_manifest(text: str, source: str = "-") -> list[Entry]:
    """The manifest's entries, or ManifestError listing every bad line of it."""
    problems: list[str] = []
    builders: list[tuple[int, dict, set[str]]] = []

    def problem(number: int, message: str) -> None:
        problems.append(f"{source}:{number}: {message}")

    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not builders:
                problem(number, "option line before any URL line")
                continue
            key, sep, value = stripped.partition("=")
            if not sep:
                problem(number, f"expected key=value, got {mask_url(stripped)!r}")
                continue
            _, entry, seen = builders[-1]
            try:
                _parse_option(key.strip(), value.strip(), entry, seen)
            except InvalidInputError as error:
                problem(number, str(error))
            continue
        urls = []
        for url in filter(None, (part.strip() for part in line.split("\t"))):
            try:
                urls.append(check_url(url))
            except InvalidInputError as error:
                problem(number, str(error))
        builders.append((number, {"urls": urls, "headers": []}, set()))

    entries = []
    targets: dict[str, int] = {}
    for number, fields, _ in builders:
        entry = Entry(
            urls=tuple(fields["urls"]),
            line=number,
            out=fields.get("out"),
            dir=fields.get("dir"),
            checksum=fields.get("checksum"),
            headers=tuple(fields["headers"]),
            connections=fields.get("connections"),
        )
        if entry.urls:
            target = _target(entry)
            if target in targets:
                problem(number, f"writes the same file as the entry on line {targets[target]}")
            else:
                targets[target] = number
        entries.append(entry)
    if problems:
        problems.sort(key=lambda p: int(p[len(source) + 1:].split(":", 1)[0]))
        raise ManifestError(problems, path=source)
    return entries
