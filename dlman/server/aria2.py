"""aria2's vocabulary over dlman's jobs: GIDs, statuses, result shapes, options, error codes.

Pure: the service gathers a :class:`View` of each job (the row plus what is live), and
everything here turns views into what aria2 would answer, values as strings as aria2 sends
them, so clients written against aria2 (AriaNg, aria2p, browser extensions) read them as
they read aria2's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.options import MAX_CONNECTIONS, mask_header, parse_header, parse_rate

T = TypeVar("T")

VERSION = "1.37.0"  # the aria2 release whose RPC interface this follows

METHODS = (
    "aria2.addUri", "aria2.addTorrent", "aria2.getPeers", "aria2.addMetalink", "aria2.remove",
    "aria2.pause", "aria2.forcePause", "aria2.pauseAll", "aria2.forcePauseAll", "aria2.unpause",
    "aria2.unpauseAll", "aria2.forceRemove", "aria2.changePosition", "aria2.tellStatus", "aria2.getUris",
    "aria2.getFiles", "aria2.getServers", "aria2.tellActive", "aria2.tellWaiting", "aria2.tellStopped",
    "aria2.getOption", "aria2.changeUri", "aria2.changeOption", "aria2.getGlobalOption",
    "aria2.changeGlobalOption", "aria2.purgeDownloadResult", "aria2.removeDownloadResult",
    "aria2.getVersion", "aria2.getSessionInfo", "aria2.shutdown", "aria2.forceShutdown",
    "aria2.getGlobalStat", "aria2.saveSession", "system.multicall", "system.listMethods",
    "system.listNotifications",
)
NOTIFICATIONS = ("aria2.onDownloadStart", "aria2.onDownloadPause", "aria2.onDownloadStop",
                 "aria2.onDownloadComplete", "aria2.onDownloadError", "aria2.onBtDownloadComplete")
NO_TOKEN = frozenset({"system.listMethods", "system.listNotifications"})  # as in aria2
UNSUPPORTED = {
    "aria2.addTorrent": "BitTorrent is not supported: dlman downloads over HTTP(S) only",
    "aria2.getPeers": "BitTorrent is not supported: dlman downloads over HTTP(S) only",
    "aria2.addMetalink": "Metalink is not supported: add the mirrors' URLs to one aria2.addUri instead",
}

# dlman's job states in aria2's words; "removed" is the daemon's own record of a removal.
STATUS = {"active": "active", "queued": "waiting", "paused": "paused", "done": "complete", "failed": "error"}
STOPPED = ("done", "failed")

_GID = re.compile(r"^[0-9a-fA-F]{16}$")


class Aria2Error(Exception):
    """An error answered as aria2 answers them: JSON-RPC code 1 with a message."""

    code = 1


# -- GIDs --------------------------------------------------------------------------------------------

def to_gid(job_id: int) -> str:
    """A job's GID: its id as 16 hex digits (ids are never reused, so neither are GIDs)."""
    return f"{job_id:016x}"


def from_gid(value: Any) -> int:
    """The job id of a GID (Aria2Error for anything that is not 16 hex digits)."""
    if not isinstance(value, str) or not _GID.match(value):
        raise Aria2Error(f"Invalid GID {value}")
    return int(value, 16)


# -- views and result shapes ---------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """One download as aria2's results describe it."""

    job_id: int
    status: str                  # aria2's status name
    urls: tuple[str, ...]
    directory: str
    path: str                    # the file, or "" while its name is unknown
    total: int
    done: int
    speed: int = 0
    connections: int = 0
    error: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    output: str | None = None
    started: bool = False        # whether any URL has been used yet

    @property
    def gid(self) -> str:
        return to_gid(self.job_id)


def wanted(keys: Sequence[str] | None, key: str) -> bool:
    return not keys or key in keys


def status_entry(view: View, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """``tellStatus``'s struct: strings throughout; only ``keys`` when given (aria2's filter)."""
    entry: dict[str, Any] = {
        "gid": view.gid,
        "status": view.status,
        "totalLength": str(view.total),
        "completedLength": str(view.done),
        "uploadLength": "0",
        "downloadSpeed": str(view.speed),
        "uploadSpeed": "0",
        "connections": str(view.connections),
        "pieceLength": "1048576",
        "numPieces": str(max(1, -(-view.total // 1048576)) if view.total else 0),
        "dir": view.directory,
        "files": files_entry(view),
    }
    if view.status in ("error", "complete", "removed"):
        entry["errorCode"] = error_code(view.error) if view.status == "error" else "0"
        entry["errorMessage"] = view.error or ""
    return {key: value for key, value in entry.items() if wanted(keys, key)}


def uris_entry(view: View) -> list[dict[str, str]]:
    state = "used" if view.started else "waiting"
    return [{"uri": url, "status": state} for url in view.urls]


def files_entry(view: View) -> list[dict[str, Any]]:
    """``getFiles``: a dlman job is always one file."""
    return [{"index": "1", "path": view.path, "length": str(view.total), "completedLength": str(view.done),
             "selected": "true", "uris": uris_entry(view)}]


def servers_entry(view: View) -> list[dict[str, Any]]:
    """``getServers``: dlman measures speed per download, so each mirror gets an equal share."""
    share = view.speed // max(1, len(view.urls))
    servers = [{"uri": url, "currentUri": url, "downloadSpeed": str(share)} for url in view.urls]
    return [{"index": "1", "servers": servers}]


def page(items: Sequence[T], offset: int, num: int) -> list[T]:
    """``tellWaiting``/``tellStopped`` paging, as aria2 does it: a negative offset counts from the
    end and returns the items in reverse order."""
    if num <= 0:
        return []
    size = len(items)
    if offset < 0:
        last = offset + size
        if last < 0:
            return []
        first = max(0, last - (num - 1))
        return list(reversed(items[first:last + 1]))
    return list(items[offset:offset + num])


MOVES = {"POS_SET": "set", "POS_CUR": "cur", "POS_END": "end"}  # changePosition's ``how``, as Queue.move names it


def move_of(how: str) -> str:
    """``Queue.move``'s ``how`` for changePosition's (aria2's error for anything else)."""
    if how not in MOVES:
        raise Aria2Error("Illegal argument.")
    return MOVES[how]


# -- error codes -------------------------------------------------------------------------------------

# aria2's exit status numbers, which its RPC reports as errorCode, by what dlman's message says.
ERROR_CODES: tuple[tuple[str, str], ...] = (
    (r"checksum mismatch", "32"),
    (r"not found \(HTTP 404|HTTP 410|\bgone \(", "3"),
    (r"not authori[sz]ed \(HTTP 40[13]", "24"),
    (r"already exists|appeared while downloading|pass --overwrite", "13"),
    (r"disk full|disk quota exceeded", "9"),
    (r"permission denied|read-only file system|cannot create directory", "16"),
    (r"cannot write ", "17"),
    (r"too many redirects", "23"),
    (r"name or service not known|nodename nor servname|temporary failure in name resolution|getaddrinfo",
     "19"),
    (r"timed out|timeout|stall", "2"),
    (r"HTTP 50[0-9]|HTTP 429|HTTP 408", "29"),
    (r"giving up after|connection|no mirror left|every connection stopped", "6"),
    (r"Content-Range|a redirect to an invalid URL|unexpected HTTP", "22"),
)


def error_code(message: str | None) -> str:
    """aria2's errorCode for a failed job's message ("1", unknown error, when nothing matches)."""
    if not message:
        return "1"
    for pattern, code in ERROR_CODES:
        if re.search(pattern, message, re.IGNORECASE):
            return code
    return "1"


# -- options -----------------------------------------------------------------------------------------

TRUE = ("true", "1", "yes")


@dataclass(frozen=True)
class Request:
    """An ``addUri`` (or ``changeOption``) mapped to dlman: where to write and the job options."""

    directory: str | None
    out: str | None
    options: dict[str, Any]


def _values(value: Any) -> list[str]:
    """An option value as aria2 takes it: a string, or a list of strings for cumulative options."""
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int))]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    return []


def _count(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {number}")
    return number


def connections_for(split: int | None, per_server: int | None, servers: int) -> int | None:
    """dlman's connections from aria2's ``split`` and ``max-connection-per-server``, within 1..64."""
    if split is None and per_server is None:
        return None
    if split is None:
        wanted_count = per_server * max(1, servers) if per_server is not None else 1
    elif per_server is None:
        wanted_count = split
    else:
        wanted_count = min(split, per_server * max(1, servers))
    return max(1, min(MAX_CONNECTIONS, wanted_count))


def request_from(options: Mapping[str, Any] | None, servers: int) -> Request:
    """Map aria2 options to dlman's (InvalidInputError for a bad value; unknown options ignored,
    as aria2's clients expect)."""
    options = options or {}
    if not isinstance(options, Mapping):
        raise InvalidInputError("options must be a struct")
    first = {key: values[0] for key, value in options.items() if (values := _values(value))}
    split = _count("split", first["split"]) if first.get("split") else None
    per_server = (_count("max-connection-per-server", first["max-connection-per-server"])
                  if first.get("max-connection-per-server") else None)
    clean: dict[str, Any] = {}
    connections = connections_for(split, per_server, servers)
    if connections is not None:
        clean["connections"] = connections
    if first.get("checksum"):
        clean["checksum"] = str(parse_checksum(first["checksum"]))
    limit = first.get("max-download-limit", "0").strip()
    if limit not in ("", "0"):  # aria2's 0: no limit of its own
        clean["max_speed"] = parse_rate(limit)
    headers = []
    for line in _values(options.get("header")):
        for part in line.split("\n"):
            if part.strip():
                name, value = parse_header(part)
                headers.append(f"{name}: {value}")
    for key, name in (("referer", "Referer"), ("user-agent", "User-Agent")):
        if first.get(key):
            value = parse_header(f"{name}: {first[key]}")[1]
            headers = [h for h in headers if h.split(":", 1)[0].strip().lower() != name.lower()]
            headers.append(f"{name}: {value}")
    if headers:
        clean["headers"] = headers
    if first.get("allow-overwrite", "").lower() in TRUE:
        clean["overwrite"] = True
    return Request(first.get("dir") or None, first.get("out") or None, clean)


def options_of(view: View, allow_overwrite: bool) -> dict[str, str]:
    """``getOption``: the job's options in aria2's names, as strings; secret header values masked."""
    options = view.options
    result = {"dir": view.directory, "allow-overwrite": "true" if options.get("overwrite") else "false"}
    if view.output:
        result["out"] = view.output
    elif view.path:
        result["out"] = os.path.basename(view.path)
    if options.get("connections"):
        result["split"] = str(options["connections"])
        result["max-connection-per-server"] = str(options["connections"])
    if options.get("checksum"):
        algorithm, _, digest = str(options["checksum"]).partition(":")
        named = {"sha256": "sha-256", "sha512": "sha-512", "sha1": "sha-1"}.get(algorithm, algorithm)
        result["checksum"] = f"{named}={digest}"
    headers = [mask_header(h) for h in options.get("headers", [])]
    if headers:
        result["header"] = "\n".join(headers)
    result["max-download-limit"] = str(options.get("max_speed") or 0)
    if options.get("timeout"):
        result["timeout"] = str(int(options["timeout"]))
    if options.get("retries") is not None:
        result["max-tries"] = str(int(options["retries"]) + 1)
    return result


def notification(method: str, job_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": [{"gid": to_gid(job_id)}]}
