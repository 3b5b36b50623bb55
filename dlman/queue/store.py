"""The SQLite file under the queue: one connection, its schema and migrations, short transactions.

Several processes share ``queue.db`` (WAL, so readers never wait for the writer). Every
change is one ``BEGIN IMMEDIATE`` transaction: taking the write lock up front makes two
writers queue instead of deadlocking, and "database is locked" is waited out here so it never
reaches the user. Threads of one process share the connection under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
)
VERSION = len(MIGRATIONS)


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
        return self.retry(lambda: self._conn.execute("PRAGMA user_version").fetchone()[0])

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
