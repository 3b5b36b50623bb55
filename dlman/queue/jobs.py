"""What the queue holds: a job's row as a snapshot (Job), a checked request (NewJob), how a job
ended for a run (Outcome), and the pure rules about them.

Nothing here touches the database; the disk is only looked at (``prepare`` tells a directory
from a file name, ``size_on_disk`` finds a finished file).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.naming import part_path, state_path
from dlman.options import check_connections, check_path_text, check_urls, mask_header, mask_url, normalise_headers, parse_rate, redact
from dlman.states import STATES

if TYPE_CHECKING:
    import sqlite3

__all__ = ["STATES", "Job", "NewJob", "Outcome", "prepare"]

# One Engine per distinct set of these (``verify``: a CA bundle path; cookie files are paths too).
ENGINE_KEYS = ("http2", "insecure", "retries", "timeout", "verify_digest", "verify", "load_cookies", "save_cookies")
DOWNLOAD_KEYS = ("connections", "checksum", "headers", "overwrite", "max_speed")  # passed to each download
HOOK_KEYS = ("on_done", "on_fail")  # run by the process that downloads the job (dlman.hooks)
OPTION_KEYS = tuple(dict.fromkeys(DOWNLOAD_KEYS + ENGINE_KEYS + HOOK_KEYS))
RESULT_KEYS = ("digest", "digest_source")  # written when the job is done: what its file was verified against

# Engine options that live only in the process that made them: a queue cannot store them.
LIVE_OPTIONS = {
    "auth": "an auth object or callable",
    "client": "an httpx client",
    "event_hooks": "event hooks",
    "cookies": "a cookie jar (store a cookie file instead: load_cookies=PATH)",
    "proxy": "a proxy (set HTTP(S)_PROXY in the environment of the run instead)",
    "cert": "a client certificate",
    "on_progress": "a progress callback (pass a listener to Queue.run instead)",
}


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the queue, as a snapshot."""

    id: int
    urls: tuple[str, ...]
    dest: str
    dest_is_dir: bool
    output: str | None
    options: Mapping[str, Any]
    state: str
    bytes_done: int
    total_bytes: int | None
    error: str | None
    owner_pid: int | None
    created: float
    updated: float

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def file(self) -> Path | None:
        """The destination file once its name is known."""
        return None if self.dest_is_dir else Path(self.dest)

    @property
    def digest(self) -> str | None:
        """What the finished file was verified against (``sha256:HEX``), if anything."""
        return self.options.get("digest")

    @property
    def digest_source(self) -> str | None:
        """Where ``digest`` came from: ``given`` (``--checksum``) or the server's header."""
        return self.options.get("digest_source")

    def public_options(self) -> dict[str, Any]:
        """The options asked for, secret header values masked (results such as the digest left out)."""
        options = {key: value for key, value in self.options.items() if key not in RESULT_KEYS}
        if options.get("headers"):
            options["headers"] = [mask_header(h) for h in options["headers"]]
        return options

    def to_dict(self) -> dict[str, Any]:
        """The public view (``list --json``): URL credentials and secret header values masked."""
        return {
            "id": self.id,
            "url": mask_url(self.url),
            "urls": [mask_url(u) for u in self.urls],
            "dest": self.dest,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "total_bytes": self.total_bytes,
            "error": None if self.error is None else redact(self.error),
            "digest": self.digest,
            "digest_source": self.digest_source,
            "options": self.public_options(),
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"],
            urls=tuple(json.loads(row["urls"])),
            dest=row["dest"],
            dest_is_dir=bool(row["dest_is_dir"]),
            output=row["output"],
            options=json.loads(row["options"]),
            state=row["state"],
            bytes_done=row["bytes_done"],
            total_bytes=row["total_bytes"],
            error=row["error"],
            owner_pid=row["owner_pid"],
            created=row["created"],
            updated=row["updated"],
        )


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated request to enqueue, not yet written: lets a whole manifest be checked first."""

    urls: tuple[str, ...]
    dest: str
    dest_is_dir: bool
    output: str | None
    options: Mapping[str, Any]

    @property
    def request(self) -> str:
        """What makes two requests the same job: the first URL and the target as asked."""
        return json.dumps([self.urls[0], self.dest, self.dest_is_dir])


def prepare(
    url_or_urls: str | Sequence[str], dest: str | os.PathLike[str] = ".", *, output: str | None = None, **options: Any
) -> NewJob:
    """Validate one job (InvalidInputError if anything is wrong) without touching the queue.

    ``output`` is a file path relative to ``dest``; without it ``dest`` is a file
    path unless it is an existing directory or ends with a separator (the
    engine's rule, made explicit so a directory can be created later).
    """
    urls = tuple(check_urls(url_or_urls))
    _refuse_live(options)
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown option(s): {', '.join(sorted(unknown))}")
    clean = _check_options(options)
    text = os.fspath(dest)
    if output:
        path, is_dir = os.path.abspath(os.path.join(text, output)), False
    else:
        is_dir = text.endswith((os.sep, "/")) or os.path.isdir(text)
        path = os.path.abspath(text)
    check_path_text(path)
    return NewJob(urls, path, is_dir, output or None, clean)


def _refuse_live(options: Mapping[str, Any]) -> None:
    """InvalidInputError for options that exist only in this process (issue: what a queue can store)."""
    live = dict(LIVE_OPTIONS)
    if options.get("timeout") is not None and not isinstance(options["timeout"], (int, float)):
        live["timeout"] = "a timeout object (store seconds instead)"
    verify = options.get("verify")
    if verify is not None and not isinstance(verify, (bool, str, os.PathLike)):
        live["verify"] = "an SSL context (store a CA bundle path instead)"
    for name in options:
        if name in live and options[name] is not None:
            raise InvalidInputError(
                f"the queue cannot store {name}: {live[name]} lives only in this process. Pass it to the run "
                f"that downloads the job instead: Queue.run(engine_options={{{name!r}: ...}})")


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options to store, each checked (InvalidInputError) and in its stored form."""
    from dlman.cookies import check_save_path, load_jar  # http.cookiejar, subprocess: only when needed
    from dlman.hooks import stored_hook

    clean: dict[str, Any] = {}
    if options.get("connections") is not None:
        clean["connections"] = check_connections(options["connections"])
    if options.get("checksum"):
        clean["checksum"] = str(parse_checksum(options["checksum"]))
    headers = normalise_headers(options.get("headers"))
    if headers:
        clean["headers"] = [f"{name}: {value}" for name, value in headers]
    for flag in ("overwrite", "http2", "insecure"):
        if options.get(flag):
            clean[flag] = True
    if options.get("retries") is not None:
        if not isinstance(options["retries"], int) or options["retries"] < 0:
            raise InvalidInputError(f"retries must be a whole number >= 0, got {options['retries']!r}")
        clean["retries"] = options["retries"]
    if options.get("timeout") is not None:
        if not isinstance(options["timeout"], (int, float)) or options["timeout"] <= 0:
            raise InvalidInputError(f"timeout must be a positive number of seconds, got {options['timeout']!r}")
        clean["timeout"] = float(options["timeout"])
    if options.get("max_speed") is not None:
        clean["max_speed"] = parse_rate(options["max_speed"])
    if options.get("verify_digest") is False:
        clean["verify_digest"] = False
    verify = options.get("verify")
    if verify is False:
        clean["insecure"] = True
    elif verify is not None and verify is not True:
        clean["verify"] = os.path.abspath(os.fspath(verify))
    if options.get("load_cookies"):
        clean["load_cookies"] = os.path.abspath(os.fspath(options["load_cookies"]))
        load_jar(clean["load_cookies"])
    if options.get("save_cookies"):
        clean["save_cookies"] = os.path.abspath(os.fspath(options["save_cookies"]))
        check_save_path(clean["save_cookies"])
    for key in HOOK_KEYS:
        if options.get(key):
            clean[key] = stored_hook(options[key])
    return clean


def stays_done(total_bytes: int | None, old: Mapping[str, Any], new: Mapping[str, Any],
               size_on_disk: int | None) -> bool:
    """Whether a ``done`` job asked for again is left done, without asking the server.

    Its file must still be there at the size recorded when it was finished (which
    is known even for a file served without a size), and the new request must not
    ask for more than was checked then: no ``overwrite``, no different checksum.
    """
    if total_bytes is None or size_on_disk != total_bytes:
        return False
    if new.get("overwrite"):
        return False
    return new.get("checksum") in (None, old.get("checksum"))


def size_on_disk(path: str) -> int | None:
    """The size of a regular file, or None when there is none (or it is not a file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def partial_files(dest: str, dest_is_dir: bool) -> list[Path]:
    """The partial data of a job (never its finished file); none while its name is unknown."""
    if dest_is_dir:
        return []
    path = Path(dest)
    return [part_path(path), state_path(path)]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended for a run: done, failed, paused, removed or interrupted."""

    job_id: int
    state: str
    url: str
    path: str | None = None
    size: int | None = None
    skipped: bool = False
    error: str | None = None
    digest: str | None = None          # what a done job's file was verified against ("sha256:HEX")
    digest_source: str | None = None   # "given", or the server's header it came from


# -- the waiting line ----------------------------------------------------------------------------------

WAITING = ("queued", "paused")  # the jobs in line: queued ones start in its order, paused ones keep their place
MOVES = ("set", "cur", "end")   # as in aria2's changePosition (POS_SET, POS_CUR, POS_END) and seek's whence


def line_position(position: int, count: int, offset: int, how: str) -> int:
    """Where a job now at ``position`` of a line of ``count`` goes when moved by ``offset``: from
    the front (``set``), from where it is (``cur``) or from the last place (``end``), kept within
    the line as aria2 does (a negative ``set`` is the front, anything past the end is the end)."""
    if how == "set":
        target = offset
    elif how == "cur":
        target = position + offset
    elif how == "end":
        target = count - 1 + offset
    else:
        raise InvalidInputError(f"unknown way to move {how!r} (one of {', '.join(MOVES)})")
    return min(max(target, 0), max(count - 1, 0))


def spread(low: float | None, high: float, count: int) -> list[float] | None:
    """``count`` increasing line keys strictly between ``low`` and ``high`` (None: nothing is
    before them), evenly spaced; None when floating point has too few values between the two."""
    if count < 1:
        return []
    if low is None:
        keys = [high - count + i for i in range(count)]
    else:
        step = (high - low) / (count + 1)
        keys = [low + step * (i + 1) for i in range(count)]
    bounds = ([] if low is None else [low]) + keys + [high]
    return keys if all(a < b for a, b in zip(bounds, bounds[1:])) else None
