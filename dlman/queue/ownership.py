"""Who may write a job's row, and when its owner counts as gone: the queue's one ownership rule.

* A runner **claims** a job by writing its identity into the row (``owner`` token, host, pid,
  the pid's start time and the pid space it belongs to) in the transaction that picks it.
  From then on only the owner writes the row's progress, and only the owner **settles** it:
  writes how it ended and clears ``owner``. An owned row is never claimable while its owner
  lives, whatever its state.
* Other processes speak to an owned row through its state and its ``cancel`` mark, never by
  clearing ``owner``: ``pause`` sets ``paused``, ``resume`` or a new ``add`` of the same request
  set ``queued``, ``remove`` sets ``cancel``. The owner's **heartbeat** (every TICK) reads them:
  ``paused`` or a ``cancel`` mark stop the download; ``queued`` (paused, then resumed before the
  owner noticed) is turned back to ``active`` and the download simply goes on. A settle after a
  stop releases the row as it then is: ``queued`` for anyone, ``paused`` for nobody, or, with a
  ``cancel`` mark, deleted (with ``delete``, its partial data too, once nothing writes it).
* An owner is **gone** when, on this host and in this pid space, its pid no longer runs the
  process that claimed (gone, or reused: the start time differs). A live process is
  authoritative, however old its heartbeat: one stopped with Ctrl-Z, or whose heartbeat waits
  behind busy disk threads, keeps its jobs. Only an owner on another host (or in a pid space
  we cannot see into) is judged by its heartbeat, gone once it is older than STALE_AFTER.
* **Claim** takes an active or queued row whose owner is gone (taking it over), else the
  queued row without owner that is first in line (the order of addition, unless a job was moved).
  **Reap** finishes what gone owners left that nobody will claim: it deletes their tombstones and
  releases their paused and queued rows.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dlman.options import storable_text
from dlman.queue.jobs import Job, partial_files

log = logging.getLogger("dlman")

TICK = 0.5  # seconds between an owner's heartbeats (and its checks for pause and remove)
DEFAULT_STALE_AFTER = 10.0


def stale_after(environ: Mapping[str, str]) -> float:
    """Seconds of heartbeat silence after which an owner on another host counts as gone.

    ``DLMAN_STALE_AFTER`` overrides it (tests use a short one); a value that is not a
    positive number is ignored.
    """
    try:
        value = float(environ.get("DLMAN_STALE_AFTER", ""))
    except ValueError:
        return DEFAULT_STALE_AFTER
    return value if value > 0 else DEFAULT_STALE_AFTER


STALE_AFTER = stale_after(os.environ)
HOST = socket.gethostname()

# The owner columns of a row, as claim writes them and the rule reads them.
OWNER_COLUMNS = "owner, owner_host, owner_space, owner_pid, owner_start, heartbeat"


@dataclass(frozen=True)
class Process:
    """A process as others can recognise it: pids compare only within one pid space."""

    host: str
    space: str | None  # boot id and pid namespace; None where they cannot be read
    pid: int
    start: int | None  # start time in clock ticks since boot; None where it cannot be read


def parse_start_time(stat: bytes) -> int | None:
    """Field 22 (start time) of a /proc/PID/stat line, or None if it is not there."""
    # Field 2 is the command name in parentheses and may itself hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None if that cannot be read."""
    try:
        return parse_start_time(Path(f"/proc/{pid}/stat").read_bytes())
    except OSError:
        return None


def pid_space() -> str | None:
    """This process's boot id and pid namespace: two processes compare pids only if these match."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


@lru_cache(maxsize=None)
def _process(pid: int) -> Process:
    return Process(HOST, pid_space(), pid, start_time(pid))


def this_process() -> Process:
    """Who is claiming: computed once per pid (a forked child is someone else)."""
    return _process(os.getpid())


def owner_gone(owner: Process, heartbeat: float | None, now: float, here: Process, *,
               running: Callable[[int], bool] = pid_running,
               started: Callable[[int], int | None] = start_time,
               stale: float | None = None) -> bool:
    """Whether the owner of a row is gone (the rule above); ``here`` is the process asking."""
    if owner.host == here.host and owner.space == here.space:
        if not owner.pid or not running(owner.pid):
            return True
        if owner.start is None:
            return False  # nothing to tell a reused pid by: a live pid keeps the job
        current = started(owner.pid)
        return current is not None and current != owner.start
    limit = STALE_AFTER if stale is None else stale
    return heartbeat is None or now - heartbeat > limit


def row_owner(row: sqlite3.Row) -> Process:
    return Process(row["owner_host"], row["owner_space"], row["owner_pid"], row["owner_start"])


class _Judge:
    """Applies the rule to many rows at once, deciding each owner once."""

    def __init__(self) -> None:
        self.here = this_process()
        self.now = time.time()
        self._seen: dict[str, bool] = {}

    def gone(self, row: sqlite3.Row) -> bool:
        if row["owner"] not in self._seen:
            self._seen[row["owner"]] = owner_gone(row_owner(row), row["heartbeat"], self.now, self.here)
        return self._seen[row["owner"]]


def live_owner(row: sqlite3.Row) -> bool:
    """Whether someone alive still owns this row (so only flags may change it)."""
    return row["owner"] is not None and not _Judge().gone(row)


def _among(ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    """An SQL condition (and its parameter) limiting a query to ``ids``."""
    if ids is None:
        return "", []
    return " AND id IN (SELECT value FROM json_each(?))", [json.dumps(list(ids))]


# The next jobs nobody owns: the first queued rows in line, read in line order through the index on
# (state, place) (see store.py). Among given ids, those rows are looked up by id instead (``+state``
# keeps the planner off the index, whose queued rows may be many while the ids are few) and sorted.
CLAIM_NEXT = ("SELECT id FROM jobs WHERE state = 'queued' AND owner IS NULL AND cancel IS NULL"
              " ORDER BY coalesce(rank, id), id LIMIT ?")
CLAIM_AMONG = ("SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND +state = 'queued'"
               " AND owner IS NULL AND cancel IS NULL ORDER BY coalesce(rank, id), id LIMIT ?")
# Owned rows, found through their own index: few (the jobs being downloaded), however long the queue.
# (No ORDER BY: sorting in SQL would tempt the planner into reading the table in id order.)
OWNED = "SELECT id, state, " + OWNER_COLUMNS + " FROM jobs WHERE owner IS NOT NULL AND cancel IS NULL{among}"


def claim(conn: sqlite3.Connection, owner: str, ids: Sequence[int] | None = None) -> Job | None:
    """Take the next claimable job (among ``ids``, if given) for ``owner``; inside a transaction."""
    jobs = claim_many(conn, owner, 1, ids)
    return jobs[0] if jobs else None


def claim_many(conn: sqlite3.Connection, owner: str, count: int, ids: Sequence[int] | None = None) -> list[Job]:
    """Take up to ``count`` claimable jobs (among ``ids``, if given) for ``owner``, in one go:
    first those whose owner is gone, then the unowned queued ones first in line. Inside a transaction."""
    among, params = _among(ids)
    judge = _Judge()
    chosen: list[int] = []
    for row in sorted(conn.execute(OWNED.format(among=among), params), key=lambda row: row["id"]):
        if len(chosen) == count:
            break
        if row["state"] in ("active", "queued") and row["owner"] != owner and judge.gone(row):
            log.info("taking over job %d from a process that is gone", row["id"])
            chosen.append(row["id"])
    if len(chosen) < count:
        chosen += [row["id"] for row in conn.execute(CLAIM_NEXT if ids is None else CLAIM_AMONG,
                                                      [*params, count - len(chosen)])]
    if not chosen:
        return []
    me = judge.here
    conn.executemany(
        "UPDATE jobs SET state = 'active', owner = ?, owner_host = ?, owner_space = ?, owner_pid = ?,"
        " owner_start = ?, heartbeat = ?, error = NULL, updated = ? WHERE id = ?",
        [(owner, me.host, me.space, me.pid, me.start, judge.now, judge.now, job_id) for job_id in chosen])
    rows = {row["id"]: row for row in conn.execute("SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                                                   (json.dumps(chosen),))}
    return [Job.from_row(rows[job_id]) for job_id in chosen]


Report = tuple[int, int | None, str | None]  # bytes done, total, file path once known


def heartbeat(conn: sqlite3.Connection, owner: str, reports: Mapping[int, Report]) -> dict[int, str]:
    """Record the progress of owned jobs; return why any must stop (inside a transaction).

    Reasons: ``pause``, ``remove``, ``delete`` (remove with --delete), or ``lost``
    (the row is no longer ours: taken over after we were judged gone).
    """
    now = time.time()
    stops: dict[int, str] = {}
    for job_id, (done, total, path) in reports.items():
        row = conn.execute("SELECT state, owner, cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            stops[job_id] = "remove"
        elif row["owner"] != owner:
            stops[job_id] = "lost"
        elif row["cancel"]:
            stops[job_id] = row["cancel"]
        elif row["state"] == "paused":
            stops[job_id] = "pause"
        elif row["state"] in ("active", "queued"):  # queued: paused and resumed since the last beat
            conn.execute(
                "UPDATE jobs SET state = 'active', bytes_done = ?, total_bytes = ?, dest = COALESCE(?, dest),"
                " dest_is_dir = CASE WHEN ? IS NULL THEN dest_is_dir ELSE 0 END, heartbeat = ?, updated = ?"
                " WHERE id = ?",
                (done, total, path, path, now, now, job_id),
            )
        else:
            stops[job_id] = "lost"
    return stops


SETTLE_FIELDS = frozenset({"bytes_done", "total_bytes", "dest", "dest_is_dir", "error"})


def settle(conn: sqlite3.Connection, owner: str, job_id: int, state: str | None,
           fields: Mapping[str, Any]) -> tuple[str | None, list[Path]]:
    """Record how an owned job ended and release it (inside a transaction).

    ``state`` is ``done`` or ``failed``; ``queued`` for an interrupted download (kept
    if the user paused it meanwhile); None after a stop for ``pause`` (the row keeps
    the state the user left it in). Returns the row's state afterwards (None if it
    is not ours or was dropped) and the partial files to delete once committed.
    """
    unknown = set(fields) - SETTLE_FIELDS
    if unknown:
        raise ValueError(f"settle cannot set {', '.join(sorted(unknown))}")
    row = conn.execute("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
    if row is None:
        return None, []
    if row["cancel"]:
        conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        doomed = partial_files(row["dest"], row["dest_is_dir"]) if row["cancel"] == "delete" else []
        return None, doomed
    ending = row["state"]
    if state in ("done", "failed") or (state == "queued" and row["state"] == "active"):
        ending = state
    sets = {**fields, "state": ending, "owner": None, "updated": time.time()}
    if isinstance(sets.get("error"), str):
        sets["error"] = storable_text(sets["error"])
    columns = ", ".join(f"{name} = ?" for name in sets)
    conn.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*sets.values(), job_id))
    return ending, []


# Owned rows nobody would claim: tombstones, and paused or queued rows.
ORPHANS = ("SELECT id, dest, dest_is_dir, cancel, " + OWNER_COLUMNS + " FROM jobs"
           " WHERE owner IS NOT NULL AND (cancel IS NOT NULL OR state != 'active')")


def reap(conn: sqlite3.Connection) -> list[Path]:
    """Finish what gone owners left (inside a transaction); return partial files to delete after."""
    judge = _Judge()
    doomed: list[Path] = []
    for row in conn.execute(ORPHANS).fetchall():
        if not judge.gone(row):
            continue
        if row["cancel"]:
            conn.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
            if row["cancel"] == "delete":
                doomed += partial_files(row["dest"], row["dest_is_dir"])
        else:
            conn.execute("UPDATE jobs SET owner = NULL WHERE id = ?", (row["id"],))
    return doomed


def orphans_left(rows: Sequence[sqlite3.Row]) -> bool:
    """Whether any of these rows (read outside a transaction) has an owner that is gone."""
    judge = _Judge()
    return any(judge.gone(row) for row in rows)
