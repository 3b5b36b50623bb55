"""The persistent job queue (SQLite) and the runner that drives the engine over it.

Several dlman processes share one database: every state change is a short
``BEGIN IMMEDIATE`` transaction, a job is *claimed* (marked active with an owner
token) before it is downloaded, and owners write a heartbeat so a job left
active by a dead process is taken up again. Other processes talk to a running
job only through its row: ``pause`` flips its state, ``remove`` leaves a
tombstone, and the owner notices on its next tick and stops the download.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dlman.checksum import parse_checksum
from dlman.errors import DownloadError, InvalidInputError
from dlman.home import prepare_home, resolve_home
from dlman.naming import part_path, state_path
from dlman.options import check_connections, check_urls, mask_header, mask_url, normalise_headers, redact

if TYPE_CHECKING:
    from dlman.result import DownloadResult, Progress

log = logging.getLogger("dlman")

STATES = ("queued", "active", "paused", "done", "failed")
TICK = 0.5  # seconds between heartbeats / checks for pause and remove
STALE_AFTER = 10.0  # a heartbeat older than this means the owner is gone
_LOCK_DEADLINE = 300.0  # keep retrying a locked database this long before giving up
HOST = socket.gethostname()
OPTION_KEYS = ("connections", "checksum", "headers", "overwrite", "http2", "insecure", "retries", "timeout")
_ENGINE_KEYS = ("http2", "insecure", "retries", "timeout")

_SCHEMA = """
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
    owner TEXT,                     -- token of the runner downloading it
    owner_pid INTEGER,
    owner_host TEXT,
    heartbeat REAL,
    cancel TEXT,                    -- 'remove' / 'delete': tombstone while its owner stops
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_request ON jobs (request);
"""


@dataclass(frozen=True)
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

    def to_dict(self) -> dict[str, Any]:
        """The public view (``list --json``): URL credentials and secret header values masked."""
        options = dict(self.options)
        if options.get("headers"):
            options["headers"] = [mask_header(h) for h in options["headers"]]
        return {
            "id": self.id,
            "url": mask_url(self.url),
            "urls": [mask_url(u) for u in self.urls],
            "dest": self.dest,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "total_bytes": self.total_bytes,
            "error": None if self.error is None else redact(self.error),
            "options": options,
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


@dataclass(frozen=True)
class NewJob:
    """A validated request to enqueue, not yet written: lets a whole manifest be checked first."""

    urls: tuple[str, ...]
    dest: str
    dest_is_dir: bool
    output: str | None
    options: Mapping[str, Any]

    @property
    def request(self) -> str:
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
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown option(s): {', '.join(sorted(unknown))}")
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
    text = os.fspath(dest)
    if output:
        path, is_dir = os.path.abspath(os.path.join(text, output)), False
    else:
        is_dir = text.endswith((os.sep, "/")) or os.path.isdir(text)
        path = os.path.abspath(text)
    return NewJob(urls, path, is_dir, output or None, clean)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_gone(row: sqlite3.Row, now: float) -> bool:
    """Whether an active row's owner is dead: its pid is gone on this host or its heartbeat is stale."""
    if row["heartbeat"] is None or now - row["heartbeat"] > STALE_AFTER:
        return True
    return row["owner_host"] == HOST and not pid_alive(row["owner_pid"])


def _part_files(row: sqlite3.Row) -> list[Path]:
    """The partial data of a job (never its finished file)."""
    if row["dest_is_dir"]:
        return []
    dest = Path(row["dest"])
    return [part_path(dest), state_path(dest)]


def _unlink(paths: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("could not delete %s: %s", path, error.strerror or error)


@dataclass(frozen=True)
class Outcome:
    """How a job ended for a run: done, failed, paused, removed or interrupted."""

    job_id: int
    state: str
    url: str
    path: str | None = None
    size: int | None = None
    skipped: bool = False
    error: str | None = None


class Listener(Protocol):
    """What a display needs from the runner (see dlman.progress)."""

    def started(self, job: Job) -> None: ...
    def progress(self, job: Job, progress: "Progress") -> None: ...
    def ended(self, outcome: Outcome) -> None: ...


class Queue:
    """The persistent queue shared by the CLI and the Python API (``home`` as for the CLI)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = resolve_home(home)
        self.path = prepare_home(self.home)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._transaction() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _retry(action: Callable[[], Any]) -> Any:
        """Run ``action``, waiting out "database is locked" so it never reaches the user."""
        deadline = time.monotonic() + _LOCK_DEADLINE
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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken up front so two writers queue instead of deadlocking."""
        with self._lock:
            self._retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._retry(lambda: self._conn.execute("COMMIT"))

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._retry(lambda: self._conn.execute(sql, params).fetchall())

    # -- the public API -------------------------------------------------------------------

    def add(
        self, url_or_urls: str | Sequence[str], dest: str | os.PathLike[str] = ".", **options: Any
    ) -> Job:
        """Enqueue one file (several URLs = mirrors); see ``add_many`` for duplicates."""
        return self.add_many([prepare(url_or_urls, dest, **options)])[0]

    def add_many(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Enqueue validated jobs all at once (one transaction: all or nothing).

        A job asking for the same first URL and destination as an existing one
        reuses that row instead of adding a duplicate: an active one is left to
        its owner, any other goes back to ``queued`` with the new options. So
        adding a manifest twice neither duplicates rows nor downloads twice (a
        complete file is found done by the engine without downloading).
        """
        now = time.time()
        ids = []
        with self._transaction() as conn:
            for new in new_jobs:
                row = conn.execute(
                    "SELECT id, state FROM jobs WHERE request = ? AND cancel IS NULL ORDER BY id DESC LIMIT 1",
                    (new.request,),
                ).fetchone()
                if row is None:
                    cursor = conn.execute(
                        "INSERT INTO jobs (urls, dest, dest_is_dir, output, request, options, state,"
                        " created, updated) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                        (json.dumps(list(new.urls)), new.dest, int(new.dest_is_dir), new.output,
                         new.request, json.dumps(new.options), now, now),
                    )
                    ids.append(cursor.lastrowid)
                    continue
                if row["state"] != "active":
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', urls = ?, options = ?, error = NULL, updated = ?"
                        " WHERE id = ?",
                        (json.dumps(list(new.urls)), json.dumps(new.options), now, row["id"]),
                    )
                ids.append(row["id"])
        return [self._require(job_id) for job_id in ids]

    def get(self, job_id: int) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ? AND cancel IS NULL", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def get_many(self, job_ids: Sequence[int]) -> dict[int, Job]:
        """The jobs among ``job_ids`` that still exist, in one query."""
        rows = self._rows("SELECT * FROM jobs WHERE cancel IS NULL AND id IN (SELECT value FROM json_each(?))",
                          (json.dumps(list(job_ids)),))
        return {job.id: job for job in map(Job.from_row, rows)}

    def _require(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise InvalidInputError(f"no job with id {job_id}")
        return job

    def list(self, state: str | None = None) -> list[Job]:
        if state is None:
            rows = self._rows("SELECT * FROM jobs WHERE cancel IS NULL ORDER BY id")
        elif state in STATES:
            rows = self._rows("SELECT * FROM jobs WHERE cancel IS NULL AND state = ? ORDER BY id", (state,))
        else:
            raise InvalidInputError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return [Job.from_row(row) for row in rows]

    def check_ids(self, ids: Sequence[int]) -> None:
        """InvalidInputError naming every id that is not in the queue."""
        missing = [i for i in ids if self.get(i) is None]
        if missing:
            raise InvalidInputError(f"no job with id {', '.join(map(str, missing))}")

    def pause(self, *ids: int, wait: float = 5.0) -> list[Job]:
        """Pause queued and active jobs; wait (up to ``wait`` s) until active ones have stopped."""
        self.check_ids(ids)
        with self._transaction() as conn:
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET state = 'paused', updated = ? WHERE id = ? AND state IN ('queued', 'active')",
                    (time.time(), job_id),
                )
        self._wait_released(ids, wait)
        return [self._require(i) for i in ids]

    def resume(self, *ids: int) -> list[Job]:
        """Put paused, failed or interrupted jobs back to ``queued`` (done and active ones are left)."""
        self.check_ids(ids)
        with self._transaction() as conn:
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET state = 'queued', error = NULL, updated = ?"
                    " WHERE id = ? AND state IN ('paused', 'failed', 'queued')",
                    (time.time(), job_id),
                )
        return [self._require(i) for i in ids]

    def remove(self, *ids: int, delete: bool = False, wait: float = 5.0) -> None:
        """Drop jobs, stopping active ones; ``delete`` also deletes their partial data.

        An active job is only marked: its owner stops it, then drops the row and
        (with ``delete``) the partial files itself, so nothing is deleted while
        still being written. A finished file is never deleted.
        """
        self.check_ids(ids)
        doomed: list[Path] = []
        with self._transaction() as conn:
            now = time.time()
            for job_id in ids:
                row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row["state"] == "active" and not _owner_gone(row, now):
                    conn.execute(
                        "UPDATE jobs SET cancel = ?, updated = ? WHERE id = ?",
                        ("delete" if delete else "remove", now, job_id),
                    )
                else:
                    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                    if delete:
                        doomed += _part_files(row)
        _unlink(doomed)
        self._wait_released(ids, wait)

    def _wait_released(self, ids: Sequence[int], wait: float) -> None:
        """Poll until none of ``ids`` is still being downloaded (or ``wait`` runs out)."""
        deadline = time.monotonic() + wait
        marks = ",".join("?" * len(ids))
        while ids:
            self.reap()
            busy = self._rows(
                f"SELECT id FROM jobs WHERE id IN ({marks}) AND owner IS NOT NULL"
                " AND (state != 'active' OR cancel IS NOT NULL)",
                ids,
            )
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def reap(self) -> None:
        """Finish what dead owners left half done: removal tombstones, and pauses they never saw."""
        doomed: list[Path] = []
        now = time.time()
        rows = self._rows("SELECT * FROM jobs WHERE owner IS NOT NULL AND (cancel IS NOT NULL OR state != 'active')")
        if not any(_owner_gone(row, now) for row in rows):
            return
        with self._transaction() as conn:
            for row in conn.execute(
                "SELECT * FROM jobs WHERE owner IS NOT NULL AND (cancel IS NOT NULL OR state != 'active')"
            ).fetchall():
                if not _owner_gone(row, now):
                    continue
                if row["cancel"]:
                    conn.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
                    if row["cancel"] == "delete":
                        doomed += _part_files(row)
                else:
                    conn.execute("UPDATE jobs SET owner = NULL WHERE id = ?", (row["id"],))
        _unlink(doomed)

    # -- claiming and reporting (used by the runner; safe across processes) -------------------

    def claim(self, owner: str, ids: Sequence[int] | None = None) -> Job | None:
        """Take the oldest claimable job (queued, or active with a dead owner) for ``owner``."""
        now = time.time()
        with self._transaction() as conn:
            only = "" if ids is None else " AND id IN (SELECT value FROM json_each(?))"
            params: list[Any] = [] if ids is None else [json.dumps(list(ids))]
            row = None
            for candidate in conn.execute(
                f"SELECT * FROM jobs WHERE state = 'active' AND cancel IS NULL{only} ORDER BY id", params
            ).fetchall():
                if _owner_gone(candidate, now):
                    log.info("taking over job %d left active by a process that is gone", candidate["id"])
                    row = candidate
                    break
            if row is None:
                row = conn.execute(
                    f"SELECT * FROM jobs WHERE state = 'queued' AND cancel IS NULL{only} ORDER BY id LIMIT 1",
                    params,
                ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'active', owner = ?, owner_pid = ?, owner_host = ?, heartbeat = ?,"
                " error = NULL, updated = ? WHERE id = ?",
                (owner, os.getpid(), HOST, now, now, row["id"]),
            )
            return Job.from_row(conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def heartbeat(self, owner: str, reports: Mapping[int, tuple[int, int | None, str | None]]) -> dict[int, str]:
        """Record progress ``{id: (bytes_done, total, path)}`` of owned jobs; return why any must stop.

        Reasons: ``pause``, ``remove``, ``delete`` (remove with --delete), or
        ``lost`` (someone else took the job over).
        """
        now = time.time()
        stops: dict[int, str] = {}
        with self._transaction() as conn:
            for job_id, (done, total, path) in reports.items():
                cursor = conn.execute(
                    "UPDATE jobs SET bytes_done = ?, total_bytes = ?, dest = COALESCE(?, dest),"
                    " dest_is_dir = CASE WHEN ? IS NULL THEN dest_is_dir ELSE 0 END, heartbeat = ?, updated = ?"
                    " WHERE id = ? AND owner = ? AND state = 'active' AND cancel IS NULL",
                    (done, total, path, path, now, now, job_id, owner),
                )
                if cursor.rowcount:
                    continue
                row = conn.execute("SELECT state, owner, cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    stops[job_id] = "remove"
                elif row["owner"] != owner:
                    stops[job_id] = "lost"
                elif row["cancel"]:
                    stops[job_id] = row["cancel"]
                elif row["state"] == "paused":
                    stops[job_id] = "pause"
                else:
                    stops[job_id] = "lost"
        return stops

    def settle(self, owner: str, job_id: int, state: str | None, **fields: Any) -> None:
        """Record how an owned job ended and release it; a tombstoned row is dropped instead.

        ``state`` None keeps the row's state (a pause seen mid-download).
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
            if row is None:
                return
            if row["cancel"]:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                doomed = _part_files(row) if row["cancel"] == "delete" else []
            else:
                doomed = []
                sets = {**fields, "owner": None, "updated": time.time()}
                if state is not None and (state != "queued" or row["state"] == "active"):
                    sets["state"] = state
                columns = ", ".join(f"{name} = ?" for name in sets)
                conn.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*sets.values(), job_id))
        _unlink(doomed)

    # -- running ----------------------------------------------------------------------------

    def run(self, jobs: int = 4, **kwargs: Any) -> dict[int, Outcome]:
        """Blocking ``arun``."""
        return asyncio.run(self.arun(jobs, **kwargs))

    async def arun(
        self,
        jobs: int = 4,
        *,
        ids: Sequence[int] | None = None,
        limit_rate: int | str | None = None,
        listener: Listener | None = None,
        engine_factory: Callable[..., Any] | None = None,
    ) -> dict[int, Outcome]:
        """Download queued jobs, ``jobs`` at once, until none is left; return how each one ended.

        With ``ids``, only those jobs, waiting for any that another process is
        downloading, and returning once all of them have ended. Cancelling the
        task stops the downloads (partial data kept), puts them back to
        ``queued`` and re-raises CancelledError.
        """
        if jobs < 1:
            raise InvalidInputError(f"jobs must be at least 1, got {jobs}")
        runner = _Runner(self, jobs, ids, limit_rate, listener, engine_factory or _default_engine)
        return await runner.run()


def _default_engine(**options: Any) -> Any:
    from dlman.engine import Engine

    return Engine(**options)


@dataclass
class _Active:
    job: Job
    task: "asyncio.Task[DownloadResult]"
    progress: "Progress | None" = None
    stop: str | None = None  # why we cancelled it


@dataclass
class _Runner:
    """One run: claims jobs, drives downloads, keeps their rows current."""

    queue: Queue
    jobs: int
    ids: Sequence[int] | None
    limit_rate: int | str | None
    listener: Listener | None
    engine_factory: Callable[..., Any]
    owner: str = field(default_factory=lambda: f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}")
    active: dict[int, _Active] = field(default_factory=dict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    engines: dict[tuple, Any] = field(default_factory=dict)
    engine_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _db(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A queue call off the event loop, so a busy database never stalls the downloads."""
        return await asyncio.to_thread(method, *args, **kwargs)

    async def run(self) -> dict[int, Outcome]:
        await self._db(self.queue.reap)
        async with AsyncExitStack() as self.stack:
            try:
                await self._loop()
            except BaseException:
                await _uninterrupted(self._shutdown())
                raise
        return self.outcomes

    def _pending(self) -> list[int] | None:
        if self.ids is None:
            return None
        return [i for i in self.ids if i not in self.outcomes and i not in self.active]

    async def _loop(self) -> None:
        # Heartbeats and watching other processes' jobs run once per TICK, not on every
        # finished download: with many small files that would be a database call per file
        # per pending job.
        last_tick = -TICK
        while True:
            exhausted = False
            while len(self.active) < self.jobs:
                pending = self._pending()
                if pending == []:
                    exhausted = True
                    break
                job = await self._db(self.queue.claim, self.owner, pending)
                if job is None:
                    exhausted = True
                    break
                self._start(job)
            now = time.monotonic()
            if now - last_tick >= TICK:
                last_tick = now
                await self._tick()
                if self.ids is not None:
                    await self._watch_others()
            for entry in [a for a in self.active.values() if a.task.done()]:
                await self._settle(entry)
            if not self.active and exhausted and (self.ids is None or not self._pending()):
                return
            tasks = [a.task for a in self.active.values()]
            if tasks:
                await asyncio.wait(tasks, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(TICK)

    def _start(self, job: Job) -> None:
        entry = _Active(job, None)  # type: ignore[arg-type]
        entry.task = asyncio.create_task(self._download(entry), name=f"dlman-job-{job.id}")
        self.active[job.id] = entry
        if self.listener:
            self.listener.started(job)

    async def _engine(self, options: Mapping[str, Any]) -> Any:
        """One engine per distinct engine-level configuration, shared by the jobs that use it."""
        config = {key: options[key] for key in _ENGINE_KEYS if key in options}
        key = tuple(sorted(config.items()))
        async with self.engine_lock:
            if key not in self.engines:
                engine = self.engine_factory(limit_rate=self.limit_rate, **config)
                self.engines[key] = await self.stack.enter_async_context(engine)
        return self.engines[key]

    async def _download(self, entry: _Active) -> "DownloadResult":
        job = entry.job
        directory = job.dest if job.dest_is_dir else os.path.dirname(job.dest)
        try:
            await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
        except OSError as error:
            raise DownloadError(
                f"cannot create directory {directory}: {error.strerror or error}", url=job.url, path=directory
            ) from None
        engine = await self._engine(job.options)
        options = {key: job.options[key] for key in ("connections", "checksum", "headers") if key in job.options}
        if job.options.get("overwrite"):
            options["overwrite"] = True

        def on_progress(progress: "Progress") -> None:
            entry.progress = progress
            if self.listener:
                self.listener.progress(entry.job, progress)

        target = job.dest + os.sep if job.dest_is_dir else job.dest
        return await engine.download(list(job.urls), target, on_progress=on_progress, **options)

    async def _tick(self) -> None:
        """Heartbeat and progress for every running job; stop those paused or removed elsewhere."""
        reports = {}
        for job_id, entry in self.active.items():
            if entry.stop:
                continue
            progress = entry.progress
            if progress is None:
                reports[job_id] = (entry.job.bytes_done, entry.job.total_bytes, None)
            else:
                path = str(progress.path) if progress.path else None
                reports[job_id] = (progress.downloaded, progress.total, path)
        if not reports:
            return
        stops = await self._db(self.queue.heartbeat, self.owner, reports)
        for job_id, reason in stops.items():
            entry = self.active[job_id]
            if not entry.task.done():
                log.info("stopping job %d (%s)", job_id, reason)
                entry.stop = reason
                entry.task.cancel()

    async def _watch_others(self) -> None:
        """For ``ids`` runs: note the end of jobs another process is downloading."""
        pending = self._pending() or []
        if not pending:
            return
        jobs = await self._db(self.queue.get_many, pending)
        for job_id in pending:
            job = jobs.get(job_id)
            if job is None:
                self._ended(Outcome(job_id, "removed", ""))
            elif job.state in ("done", "failed", "paused"):
                self._ended(Outcome(job_id, job.state, job.url, path=job.dest, size=job.total_bytes,
                                    skipped=job.state == "done", error=job.error))

    def _ended(self, outcome: Outcome) -> None:
        self.outcomes[outcome.job_id] = outcome
        if self.listener:
            self.listener.ended(outcome)

    async def _settle(self, entry: _Active) -> None:
        """Write how a finished task ended and release its job."""
        job = entry.job
        del self.active[job.id]
        progress = entry.progress
        done = progress.downloaded if progress else job.bytes_done
        total = progress.total if progress else job.total_bytes
        fields: dict[str, Any] = {"bytes_done": done, "total_bytes": total}
        if progress and progress.path:
            fields.update(dest=str(progress.path), dest_is_dir=0)
        if entry.task.cancelled():
            reason = entry.stop or "shutdown"
            if reason == "lost":
                return
            state = "queued" if reason == "shutdown" else None
            await self._db(self.queue.settle, self.owner, job.id, state, **fields)
            named = {"shutdown": "interrupted", "pause": "paused"}.get(reason, "removed")
            self._ended(Outcome(job.id, named, job.url, path=fields.get("dest")))
            return
        error = entry.task.exception()
        if error is None:
            result = entry.task.result()
            fields.update(dest=str(result.path), dest_is_dir=0, bytes_done=result.size, total_bytes=result.size,
                          error=None)
            await self._db(self.queue.settle, self.owner, job.id, "done", **fields)
            self._ended(Outcome(job.id, "done", job.url, path=str(result.path), size=result.size,
                                skipped=result.skipped))
            return
        if isinstance(error, DownloadError):
            message = redact(str(error))
        else:
            log.error("job %d: unexpected error", job.id, exc_info=error)
            message = redact(f"internal error: {type(error).__name__}: {error}")
        fields["error"] = message
        await self._db(self.queue.settle, self.owner, job.id, "failed", **fields)
        self._ended(Outcome(job.id, "failed", job.url, path=fields.get("dest"), error=message))

    async def _shutdown(self) -> None:
        """Stop every download (engines save their state) and put the jobs back to ``queued``."""
        for entry in self.active.values():
            if not entry.task.done():
                entry.stop = entry.stop or "shutdown"
                entry.task.cancel()
        if self.active:
            await asyncio.wait([a.task for a in self.active.values()])
        for entry in list(self.active.values()):
            await self._settle(entry)


async def _uninterrupted(coroutine: Any) -> None:
    """Run cleanup to its end even if the caller is cancelled again meanwhile (a second Ctrl-C)."""
    task = asyncio.ensure_future(coroutine)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
    task.result()
