"""Manifest files (``-i``): aria2's input-file format for the keys the SPEC names.

Pure but for a scratch table: it takes lines and returns entries, so the whole file can be
checked (and every problem reported as ``FILE:LINE: message``) before anything is committed.
``iter_manifest`` streams: a manifest of a million entries is checked and enqueued in one
transaction without ever being held in memory.
"""

from __future__ import annotations

import posixpath
import re
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, NamedTuple

from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.options import check_connections, check_url, mask_url, parse_header

KEYS = ("out", "dir", "checksum", "header", "connections", "split")
_ALIASES = {"split": "connections"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")


class Entry(NamedTuple):
    """One file to download: its mirror URLs and the options of its indented lines.

    (A named tuple: a manifest makes a million of them, and a frozen dataclass costs twice as
    much to build.)
    """

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
    if path.startswith("/") or _DRIVE.match(path):
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


def _parse_option(key: str, value: str, entry: dict[str, Any], seen: set[str]) -> None:
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
    directory = entry.dir or "."  # already normalised by check_dir
    if entry.out is not None:  # dir=a + out=b/c and dir=a/b + out=c write the same file
        return f"\0file\0{posixpath.normpath(posixpath.join(directory, entry.out))}"
    return f"{directory}\0url\0{entry.urls[0] if entry.urls else ''}"


class TargetIndex:
    """Which line first wrote each target, in a private scratch database.

    A manifest of a million entries would otherwise keep a million strings in memory just
    to spot two entries writing the same file; SQLite keeps a few pages and spills the rest.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute("CREATE TABLE targets (target TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one transaction: nothing of this is ever kept

    def first(self, target: str, line: int) -> int | None:
        """Record ``target`` as written by ``line``; the earlier line that writes it, if any."""
        try:
            self._db.execute("INSERT INTO targets VALUES (?, ?)", (target, line))
        except sqlite3.IntegrityError:
            earlier: int = self._db.execute("SELECT line FROM targets WHERE target = ?", (target,)).fetchone()[0]
            return earlier
        return None

    def close(self) -> None:
        self._db.close()


class _InMemory(dict):  # type: ignore[type-arg]
    """``TargetIndex`` for a manifest already held in memory."""

    def first(self, target: str, line: int) -> int | None:
        earlier: int | None = self.get(target)
        if earlier is None:
            self[target] = line
        return earlier

    def close(self) -> None:
        pass


def iter_manifest(lines: Iterable[str], source: str = "-", targets: TargetIndex | None = None) -> Iterator[Entry]:
    """The manifest's entries, one at a time, while it is clean so far; then ManifestError
    listing every bad line of it, if any.

    Nothing but the entry being read and the problems found stays in memory, so the
    caller can write each entry as it comes, in one transaction it rolls back if this
    raises: the whole manifest is still checked before anything is committed.
    """
    problems: list[tuple[int, str]] = []
    index: TargetIndex | _InMemory = TargetIndex() if targets is None else targets
    building: tuple[int, dict[str, Any], set[str]] | None = None

    def problem(number: int, message: str) -> None:
        problems.append((number, f"{source}:{number}: {message}"))

    def finish(number: int, fields: dict[str, Any]) -> Entry | None:
        entry = Entry(urls=tuple(fields["urls"]), line=number, out=fields.get("out"), dir=fields.get("dir"),
                      checksum=fields.get("checksum"), headers=tuple(fields["headers"]),
                      connections=fields.get("connections"))
        if entry.urls:
            earlier = index.first(_target(entry), number)
            if earlier is not None:
                problem(number, f"writes the same file as the entry on line {earlier}")
        return None if problems else entry

    try:
        for number, raw in enumerate(lines, start=1):
            if number == 1 and raw.startswith("\ufeff"):
                raw = raw[1:]
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if not stripped or stripped[0] == "#":
                continue
            if line[0] in " \t":
                if building is None:
                    problem(number, "option line before any URL line")
                    continue
                key, sep, value = stripped.partition("=")
                if not sep:
                    problem(number, f"expected key=value, got {mask_url(stripped)!r}")
                    continue
                _, fields, seen = building
                try:
                    _parse_option(key.strip(), value.strip(), fields, seen)
                except InvalidInputError as error:
                    problem(number, str(error))
                continue
            if building is not None:
                entry = finish(building[0], building[1])
                if entry is not None:
                    yield entry
            urls = []
            for url in filter(None, (part.strip() for part in line.split("\t"))):
                try:
                    urls.append(check_url(url))
                except InvalidInputError as error:
                    problem(number, str(error))
            building = (number, {"urls": urls, "headers": []}, set())
        if building is not None:
            entry = finish(building[0], building[1])
            if entry is not None:
                yield entry
    finally:
        if targets is None:
            index.close()
    if problems:
        problems.sort(key=lambda found: found[0])
        raise ManifestError([message for _, message in problems], path=source)


def parse_manifest(text: str, source: str = "-") -> list[Entry]:
    """The manifest's entries, or ManifestError listing every bad line of it."""
    return list(iter_manifest(text.split("\n"), source, _InMemory()))  # type: ignore[arg-type]


def read_lines(handle: BinaryIO, source: str) -> Iterator[str]:
    """The lines of a UTF-8 file as they are read (a line ends at LF only, as in ``str.split``).

    InvalidInputError names the first byte that is not UTF-8.
    """
    offset = 0
    for raw in handle:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInputError(f"{source}: not UTF-8 text ({error.reason} at byte {offset + error.start})",
                                    path=source) from None
        offset += len(raw)
