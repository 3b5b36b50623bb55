"""The SQLite file under the queue: one connection, its schema and migrations, short transactions.

Several processes share ``queue.db`` (WAL, so readers never wait for the writer). Every
change is one ``BEGIN IMMEDIATE`` transaction: taking the write lock up front makes two
writers queue instead of deadlocking, and "database is locked" is waited out here so it never
reaches the user. Threads of one process share the connection under a lock.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, TypeVar

from dlman.errors import InvalidInputError
from dlman.queue.jobs import WAITING, Job, NewJob, line_position, size_on_disk, spread, stays_done

T = TypeVar("T")

LOCK_DEADLINE = 300.0  # keep retrying a locked database this long before giving up

# Each entry brings a database from the version before it to its own (PRAGMA user_version).
# A database made before versions were counted is at 0 with the first entry's table already
# there, which is why that entry only creates what is missing.
MIGRATIONS: tuple[str, ...] = (
    # 1: the jobs table.
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        urls TEXT NOT NULL,             -- JSON list: mirrors of one file
        dest TEXT NOT NULL,             -- absolute: a directory until the file name is known
        dest_is_dir INTEGER NOT NULL,
        output TEXT,                    -- the name asked for (-o / out=), if any
        request TEXT NOT NULL,          -- first URL + target as asked: spots duplicates
        options TEXT NOT NULL,          -- JSON: per-download and per-engine options
        state TEXT NOT NULL,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        total_bytes INTEGER,
        error TEXT,
        owner TEXT,                     -- token of the runner downloading it (see ownership.py)
        owner_pid INTEGER,
        owner_host TEXT,
        heartbeat REAL,
        cancel TEXT,                    -- 'remove' / 'delete': tombstone while its owner stops
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
    CREATE INDEX IF NOT EXISTS jobs_request ON jobs (request);
    """,
    # 2: enough about the owner to recognise it while it lives, and an index of the owned
    # rows (the jobs being downloaded), so looking at them costs nothing per queued job.
    """
    ALTER TABLE jobs ADD COLUMN owner_start INTEGER;  -- the owner pid's start time
    ALTER TABLE jobs ADD COLUMN owner_space TEXT;     -- boot and pid namespace owner_pid belongs to
    CREATE INDEX jobs_owned ON jobs (owner) WHERE owner IS NOT NULL;
    """,
    # 3: a job's place in the waiting line, NULL meaning its id (so adding costs nothing more and
    # the line is the order of addition until a job is moved); the index on (state, id) becomes
    # one on (state, place), through which claims take the next queued jobs and lists page.
    """
    ALTER TABLE jobs ADD COLUMN rank REAL;            -- place in line when moved (see LINE)
    DROP INDEX IF EXISTS jobs_state;
    CREATE INDEX jobs_line ON jobs (state, coalesce(rank, id));
    """,
)
VERSION = len(MIGRATIONS)

CHUNK = 2000  # requests looked up and inserted together by ``add_stream``: memory stays flat


def _statements(script: str) -> list[str]:
    """The statements of a migration, without comments (``executescript`` would commit)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Store:
    """One connection to ``queue.db``, migrated to the current schema."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self.retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        if self._version() < VERSION:
            with self.transaction() as conn:
                migrate(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _version(self) -> int:
        return int(self.retry(lambda: self._conn.execute("PRAGMA user_version").fetchone()[0]))

    @staticmethod
    def retry(action: Callable[[], T]) -> T:
        """Run ``action``, waiting out "database is locked" so it never reaches the user."""
        deadline = time.monotonic() + LOCK_DEADLINE
        delay = 0.01
        while True:
            try:
                return action()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction: all of it or nothing."""
        with self._lock:
            self.retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self.retry(lambda: self._conn.execute("COMMIT"))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one read (its own snapshot)."""
        with self._lock:
            return self.retry(lambda: self._conn.execute(sql, params).fetchall())


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to VERSION, inside the caller's transaction (another process may have
    done it meanwhile: the version is read again under the write lock)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")


def _json_strings(strings: Iterable[str]) -> str:
    """``json.dumps(list(strings))``, character for character, at a fraction of its cost per row."""
    return "[" + ", ".join(map(encode_basestring_ascii, strings)) + "]"


def _json_options(options: Any) -> str:
    return json.dumps(options) if options else "{}"


# The newest job for each request in a JSON array, found through the index on request.
_ASKED_BEFORE = ("SELECT jobs.* FROM json_each(?) AS asked JOIN jobs ON jobs.id ="
                 " (SELECT max(id) FROM jobs WHERE request = asked.value AND cancel IS NULL)")


@dataclass
class _Added:
    """What one ``_upsert`` did: the requests as asked, and the job now answering each."""

    asked: list[str]
    last: dict[str, NewJob]   # per distinct request, the last one asked (it wins)
    kept: dict[str, Job]      # requests that found a job already there (reused or left alone)
    fresh: dict[str, int]     # requests that got a new row: its id
    now: float


def _upsert(conn: sqlite3.Connection, new_jobs: Sequence[NewJob]) -> _Added:
    asked = [new.request for new in new_jobs]
    added = _Added(asked, dict(zip(asked, new_jobs)), {}, {}, time.time())
    if not added.last:
        return added
    now, last, kept = added.now, added.last, added.kept
    requeue = []
    rejoin: list[int] = []  # ended jobs asked for again: they join the end of the line
    for row in conn.execute(_ASKED_BEFORE, (_json_strings(last),)):
        request, state = row["request"], row["state"]
        new = last[request]
        if state == "active" or (state == "done" and stays_done(
                row["total_bytes"], json.loads(row["options"]), new.options, size_on_disk(row["dest"]))):
            kept[request] = Job.from_row(row)
            continue
        urls, options = _json_strings(new.urls), _json_options(new.options)
        bytes_done = 0 if state == "done" else row["bytes_done"]
        updated = row["updated"]
        if (state, row["urls"], row["options"], row["error"], row["bytes_done"]) != (
                "queued", urls, options, None, bytes_done):
            requeue.append((urls, options, bytes_done, now, row["id"]))
            updated = now
        if state not in WAITING:
            rejoin.append(row["id"])
        kept[request] = Job(row["id"], new.urls, row["dest"], bool(row["dest_is_dir"]), row["output"],
                            new.options, "queued", bytes_done, row["total_bytes"], None, row["owner_pid"],
                            row["created"], updated)
    conn.executemany("UPDATE jobs SET state = 'queued', urls = ?, options = ?, bytes_done = ?, error = NULL,"
                     " updated = ? WHERE id = ?", requeue)
    fresh = [request for request in last if request not in kept]
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
    _to_the_end(conn, rejoin, newest)
    conn.executemany(
        "INSERT INTO jobs (urls, dest, dest_is_dir, output, request, options, state, created, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
        ((_json_strings(new.urls), new.dest, int(new.dest_is_dir), new.output, request,
          _json_options(new.options), now, now) for request, new in ((r, last[r]) for r in fresh)))
    # Inside our transaction the new rows are exactly those past the old largest id, in the order inserted.
    new_ids = [row[0] for row in conn.execute("SELECT id FROM jobs WHERE id > ? ORDER BY id", (newest,))]
    assert len(new_ids) == len(fresh)
    added.fresh.update(zip(fresh, new_ids))
    return added


_LAST_PLACE = ("SELECT max(line) FROM (" + " UNION ALL ".join(
    f"SELECT max(coalesce(rank, id)) AS line FROM jobs WHERE state = '{state}'" for state in WAITING) + ")")


def _to_the_end(conn: sqlite3.Connection, job_ids: Sequence[int], newest: int) -> None:
    """Give ``job_ids`` places at the end of the line, in order: after every waiting job and
    before any job added later (whose id, and so place, is larger than ``newest``)."""
    if not job_ids:
        return
    last = conn.execute(_LAST_PLACE).fetchone()[0]
    keys = spread(last, newest + 1, len(job_ids))
    if keys is None:  # no room left between the two: their ids are the next best
        return
    conn.executemany("UPDATE jobs SET rank = ? WHERE id = ?", zip(keys, job_ids))


def in_line_order(conn: sqlite3.Connection, job_ids: Sequence[int]) -> list[int]:
    """``job_ids`` with the waiting ones first, in line order, then the others as given."""
    placed = [row[0] for row in conn.execute(
        "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
        f" AND state IN ({', '.join(repr(state) for state in WAITING)}) ORDER BY coalesce(rank, id), id",
        (json.dumps(list(job_ids)),))]
    seen = set(placed)
    return placed + [job_id for job_id in job_ids if job_id not in seen]


def insert_jobs(conn: sqlite3.Connection, new_jobs: Sequence[NewJob]) -> list[Job]:
    """Enqueue validated jobs inside the caller's transaction; one Job per entry, in order.

    A request for the same first URL and destination as an existing job reuses that
    job instead of adding a duplicate: an active one is left to its owner; a done one
    whose file is still whole stays done (see ``jobs.stays_done``); any other goes
    back to ``queued`` with the new URLs and options. Of the same request asked twice,
    the last one wins.
    """
    added = _upsert(conn, new_jobs)
    for request, job_id in added.fresh.items():
        new = added.last[request]
        added.kept[request] = Job(job_id, new.urls, new.dest, new.dest_is_dir, new.output, new.options, "queued",
                                  0, None, None, None, added.now, added.now)
    return [added.kept[request] for request in added.asked]


def _insert_ids(conn: sqlite3.Connection, new_jobs: Sequence[NewJob]) -> list[int]:
    """``insert_jobs``, answering with ids only."""
    added = _upsert(conn, new_jobs)
    return [added.fresh[r] if r in added.fresh else added.kept[r].id for r in added.asked]


def add_stream(store: Store, new_jobs: Iterable[NewJob]) -> array[int]:
    """Enqueue jobs as they come, in one transaction: all of them, or none if the iterable raises.

    ``new_jobs`` may be a generator checking a manifest as it reads it (``manifest.iter_manifest``):
    its error rolls everything back. Only a chunk of requests is in memory at a time; the ids
    come back in order, eight bytes each.
    """
    ids: array[int] = array("q")
    source = iter(new_jobs)
    with store.transaction() as conn:
        while chunk := list(itertools.islice(source, CHUNK)):
            ids.extend(_insert_ids(conn, chunk))
    return ids


# -- the waiting line ------------------------------------------------------------------------------
#
# Queued jobs start in line order: by place (``coalesce(rank, id)``, written as the index has it, so
# SQLite reads rows in that order instead of sorting them), then by id. A job never moved has no
# rank: its place is its id, and a job added later has a larger id than any place given so far,
# so it joins at the end. Paused jobs keep their place in line (aria2's waiting queue holds both).


def _in_line(states: Sequence[str], columns: str) -> str:
    """``columns`` and the place (``line``) of the live rows of ``states``: one arm per state, each
    read in order through the index on (state, place), merged by the caller's ORDER BY."""
    return " UNION ALL ".join(f"SELECT {columns}, coalesce(rank, id) AS line FROM jobs"
                              f" WHERE state = '{state}' AND cancel IS NULL" for state in states)


def line_query(states: Sequence[str], columns: str = "*") -> str:
    """Rows of ``states`` after place ?1 and id ?2, in line order, at most ?3."""
    return (f"SELECT * FROM ({_in_line(states, columns)}) WHERE line >= ?1 AND (line > ?1 OR id > ?2)"
            " ORDER BY line, id LIMIT ?3")


START = (float("-inf"), 0)  # (place, id) before the whole line

# The waiting line without one job (?1), from the ?3rd job on, at most ?2 of them.
_OTHERS = f"SELECT id, line FROM ({_in_line(WAITING, 'id')}) WHERE id != ?1 ORDER BY line, id LIMIT ?2 OFFSET ?3"
_COUNT = "SELECT count(*) FROM jobs WHERE state = ?1 AND cancel IS NULL"
_COUNT_BEFORE = _COUNT + " AND coalesce(rank, id) <= ?2 AND (coalesce(rank, id) < ?2 OR id < ?3)"


def move(conn: sqlite3.Connection, job_id: int, offset: int, how: str) -> int:
    """Move a waiting job in line by ``jobs.line_position``'s rule, inside the caller's transaction;
    its new position (0: the front)."""
    row = conn.execute("SELECT state, cancel, coalesce(rank, id) AS line FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row["cancel"] is not None:
        raise InvalidInputError(f"no job with id {job_id}")
    if row["state"] not in WAITING:
        raise InvalidInputError(f"job {job_id} is {row['state']}: only queued and paused jobs have a place in line")
    count = sum(conn.execute(_COUNT, (state,)).fetchone()[0] for state in WAITING)
    here = sum(conn.execute(_COUNT_BEFORE, (state, row["line"], job_id)).fetchone()[0] for state in WAITING)
    target = line_position(here, count, offset, how)
    if target != here:
        _place(conn, job_id, target, count - 1)
    return target


def _place(conn: sqlite3.Connection, job_id: int, target: int, others: int) -> None:
    """Give ``job_id`` the place ``target`` in the line of the ``others`` waiting jobs: a key between
    its new neighbours' or, when floating point has no value left between them, a stretch of the
    line around them spread out evenly (twice as long each time: rare, and cheap when it happens)."""
    # Every job added later has a larger id: places stay below it, so new jobs join at the end.
    ceiling = float(conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()[0] + 1)
    reach = 0
    while True:
        start, end = max(target - reach, 0), min(target + reach, others)  # the stretch given new keys
        first = max(start - 1, 0)  # from the neighbour before it (if any) to the one after it (if any)
        rows = [(row[0], row[1]) for row in conn.execute(_OTHERS, (job_id, end + 1 - first, first))]
        low = rows.pop(0)[1] if start > 0 else None
        high = rows.pop()[1] if end < others else ceiling
        keys = spread(low, high, len(rows) + 1)
        if keys is not None:
            break
        if start == 0 and end == others:
            raise AssertionError(f"no room in a line of {others + 1} below {ceiling}")
        reach = max(1, 2 * reach)
    ids = [job for job, _ in rows]
    ids.insert(target - start, job_id)
    conn.executemany("UPDATE jobs SET rank = ? WHERE id = ?", zip(keys, ids))
