"""The persistent job queue, shared by the command line and the Python API.

Where each rule lives:

* ``store.py``: the SQLite file: connection, schema and its migrations, transactions,
  waiting out "database is locked";
* ``jobs.py``: what a job is (Job, NewJob, ``prepare``, Outcome) and the pure rules about
  jobs, such as when a finished job asked for again stays done;
* ``ownership.py``: who owns an active row, when an owner is gone, and what claim,
  heartbeat, settle and reap may do;
* ``runner.py``: one run: claims jobs, drives the engine, reports how each ended;
* here: ``Queue``, the operations a user asks for (add, list, pause, resume, move, remove, run).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlman.errors import InvalidInputError
from dlman.home import prepare_home, resolve_home
from dlman.naming import PART_SUFFIX, STATE_SUFFIX
from dlman.options import check_urls, redact
from dlman.queue import ownership, store
from dlman.queue.jobs import (
    MOVES,
    RESULT_KEYS,
    STATES,
    WAITING,
    Job,
    NewJob,
    Outcome,
    partial_files,
    prepare,
)
from dlman.queue.ownership import HOST, STALE_AFTER, TICK
from dlman.queue.store import Store

if TYPE_CHECKING:
    import sqlite3
    from http.cookiejar import CookieJar

    from dlman.queue.runner import Listener
    from dlman.result import Progress

__all__ = ["HOST", "STALE_AFTER", "STATES", "TICK", "Job", "Listener", "NewJob", "Outcome", "Queue", "prepare",
           "redact"]

log = logging.getLogger("dlman")

PAGE = 500  # rows per read while listing: memory stays flat however long the queue
RESUMABLE = ("paused", "failed", "queued")


def __getattr__(name: str) -> Any:
    if name == "Listener":  # the runner (and asyncio with it) is imported when a run starts
        from dlman.queue.runner import Listener

        return Listener
    raise AttributeError(f"module 'dlman.queue' has no attribute {name!r}")


def _default_engine(**options: Any) -> Any:
    from dlman.engine import Engine

    return Engine(**options)


def _engine_maker(factory: Callable[..., Any], live: Mapping[str, Any]) -> Callable[..., Any]:
    """What the runner calls for each engine configuration: the run's live options, then the
    job's stored ones made live (cookie files become a jar, saved again when the engine closes)."""

    def make(**config: Any) -> Any:
        options = {**live, **config}
        load, save = options.pop("load_cookies", None), options.pop("save_cookies", None)
        if not (load or save):
            return factory(**options)
        from dlman.cookies import engine_options, load_jar, make_jar

        jar = load_jar(load) if load else make_jar()
        with_jar = engine_options(jar)
        hooks = {name: list(with_jar["event_hooks"][name]) + list((options.get("event_hooks") or {}).get(name, []))
                 for name in ("request", "response")}
        options.update(cookies=with_jar["cookies"], event_hooks=hooks)
        engine = factory(**options)
        return _saving_cookies(engine, jar, save) if save else engine

    return make


@contextlib.asynccontextmanager
async def _saving_cookies(engine: Any, jar: "CookieJar", path: str) -> AsyncIterator[Any]:
    """The engine, whose cookies (those loaded and those the servers set) are saved when it closes."""
    from dlman.cookies import save_jar

    try:
        async with engine as entered:
            yield entered
    finally:
        try:
            save_jar(jar, path)
        except OSError as error:
            log.warning("cannot save cookies to %s: %s", path, error.strerror or error)


class _Listeners:
    """Several listeners heard as one (the caller's display, and the hooks)."""

    def __init__(self, *listeners: "Listener | None") -> None:
        self.listeners = [listener for listener in listeners if listener is not None]

    def started(self, job: Job) -> None:
        for listener in self.listeners:
            listener.started(job)

    def progress(self, job: Job, progress: "Progress") -> None:
        for listener in self.listeners:
            listener.progress(job, progress)

    def ended(self, outcome: Outcome) -> None:
        for listener in self.listeners:
            listener.ended(outcome)


def _check_engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The live engine options of a run; the run's own parameters are not among them."""
    for name in ("limit_rate", "on_progress"):
        if name in options:
            raise InvalidInputError(f"engine_options cannot hold {name}: pass it to the run itself")
    return dict(options)


def _settle(conn: "sqlite3.Connection", owner: str, job_id: int, state: str | None,
            fields: dict[str, Any]) -> tuple[str | None, list[Path]]:
    """``ownership.settle``, keeping with a done job's options what its file was verified against."""
    result = {key: fields.pop(key, None) for key in RESULT_KEYS}
    if state == "done":
        conn.execute("UPDATE jobs SET options = json_remove(options, '$.digest', '$.digest_source')"
                     " WHERE id = ? AND owner = ?", (job_id, owner))
        if result["digest"]:
            conn.execute("UPDATE jobs SET options = json_set(options, '$.digest', ?, '$.digest_source', ?)"
                         " WHERE id = ? AND owner = ?", (result["digest"], result["digest_source"], job_id, owner))
    return ownership.settle(conn, owner, job_id, state, fields)


def _unlink(paths: Iterable[Path]) -> None:
    """Delete jobs' partial data, never while a transfer owns it (its ``NAME.part`` is locked)."""
    from dlman.storage import remove_partial

    for dest in dict.fromkeys(path.with_name(path.name.removesuffix(STATE_SUFFIX).removesuffix(PART_SUFFIX))
                              for path in paths):
        try:
            if not remove_partial(dest):
                log.warning("kept the partial data of %s: a transfer is writing it", dest)
        except OSError as error:
            log.warning("could not delete the partial data of %s: %s", dest, error.strerror or error)


def _json_ids(ids: Iterable[int]) -> str:
    return json.dumps(list(ids))


class Queue:
    """The persistent queue shared by the CLI and the Python API (``home`` as for the CLI)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = resolve_home(home)
        self.path = prepare_home(self.home)
        self._store = Store(self.path)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- adding ---------------------------------------------------------------------------

    def add(
        self, url_or_urls: str | Sequence[str], dest: str | os.PathLike[str] = ".", **options: Any
    ) -> Job:
        """Enqueue one file (several URLs = mirrors); see ``add_many`` for duplicates."""
        return self.add_many([prepare(url_or_urls, dest, **options)])[0]

    def add_many(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Enqueue validated jobs all at once (one transaction: all or nothing); one Job per entry.

        A request for the same first URL and destination as an existing job reuses
        that job instead of adding a duplicate: an active one is left to its owner; a
        done one whose file is still whole stays done (see ``jobs.stays_done``); any
        other goes back to ``queued`` with the new URLs and options. So adding a
        manifest twice neither duplicates rows nor downloads anything again.
        """
        with self._store.transaction() as conn:
            return store.insert_jobs(conn, new_jobs)

    def add_stream(self, new_jobs: Iterable[NewJob]) -> Sequence[int]:
        """``add_many`` for a stream of jobs too long to hold (a manifest read as it is checked):
        one transaction, rolled back if the stream raises; returns the ids in order."""
        return store.add_stream(self._store, new_jobs)

    # -- reading --------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        rows = self._store.rows("SELECT * FROM jobs WHERE id = ? AND cancel IS NULL", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def get_many(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The jobs among ``job_ids`` that still exist, in one query."""
        rows = self._store.rows("SELECT * FROM jobs WHERE cancel IS NULL AND id IN (SELECT value FROM json_each(?))",
                                (_json_ids(job_ids),))
        return {job.id: job for job in map(Job.from_row, rows)}

    def iter_jobs(self, state: str | None = None) -> Iterator[Job]:
        """Every job in id order, or those in ``state`` in line order (for queued jobs, the
        order they start in; see ``move``), read a page at a time.

        Memory stays flat however long the queue is, and no read is held open
        between pages, so writers are never kept waiting by a slow consumer.
        """
        if state is not None and state not in STATES:
            raise InvalidInputError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return self._pages(state)

    def iter_waiting(self) -> Iterator[Job]:
        """The waiting line, a page at a time: queued and paused jobs in line order, as aria2's
        waiting queue lists them (queued jobs start in this order; paused ones keep their place)."""
        return self._line(WAITING)

    def _pages(self, state: str | None) -> Iterator[Job]:
        if state is not None:
            yield from self._line((state,))
            return
        after = 0
        while True:
            rows = self._store.rows("SELECT * FROM jobs WHERE cancel IS NULL AND id > ? ORDER BY id LIMIT ?",
                                    (after, PAGE))
            yield from map(Job.from_row, rows)
            if len(rows) < PAGE:
                return
            after = rows[-1]["id"]

    def _line(self, states: Sequence[str]) -> Iterator[Job]:
        """The line's ids are read at once (eight bytes a job), the rows a page at a time: places
        change when another process moves jobs, and pages by place would then show a job twice
        or not at all. A job that left ``states`` meanwhile is left out; jobs that joined the
        end of the line meanwhile are read after the others."""
        from array import array
        from bisect import bisect_left

        ids, after = array("q"), store.START
        for row in self._store.rows(store.line_query(states, "id"), (*store.START, -1)):
            ids.append(row[0])
            after = (row[1], row[0])
        wanted = set(states)
        for start in range(0, len(ids), PAGE):
            page = ids[start:start + PAGE]
            found = {row["id"]: row for row in self._store.rows(
                "SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND cancel IS NULL",
                (json.dumps(page.tolist()),))}
            yield from (Job.from_row(found[job_id]) for job_id in page
                        if job_id in found and found[job_id]["state"] in wanted)
        listed = array("q", sorted(ids))
        query = store.line_query(states)
        while True:
            rows = self._store.rows(query, (*after, PAGE))
            for row in rows:
                at = bisect_left(listed, row["id"])
                if at == len(listed) or listed[at] != row["id"]:
                    yield Job.from_row(row)
            if len(rows) < PAGE:
                return
            after = (rows[-1]["line"], rows[-1]["id"])

    def list(self, state: str | None = None) -> list[Job]:
        """Every job (or those in ``state``), in ``iter_jobs``'s order; ``iter_jobs`` streams them instead."""
        return list(self.iter_jobs(state))

    def _in_line_order(self, ids: Sequence[int]) -> builtins.list[int]:
        with self._store.transaction() as conn:
            return store.in_line_order(conn, ids)

    def waiting(self) -> builtins.list[Job]:
        """The waiting line (``iter_waiting``) as a list."""
        return builtins.list(self.iter_waiting())

    def count(self, state: str | None = None) -> int:
        """How many jobs there are (in ``state``), read through the index."""
        if state is None:
            return int(self._store.rows("SELECT count(*) FROM jobs WHERE cancel IS NULL")[0][0])
        if state not in STATES:
            raise InvalidInputError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return int(self._store.rows("SELECT count(*) FROM jobs WHERE state = ? AND cancel IS NULL", (state,))[0][0])

    def check_ids(self, ids: Sequence[int]) -> None:
        """InvalidInputError naming every id that is not in the queue."""
        present = {row["id"] for row in self._store.rows(
            "SELECT id FROM jobs WHERE cancel IS NULL AND id IN (SELECT value FROM json_each(?))", (_json_ids(ids),))}
        missing = [i for i in ids if i not in present]
        if missing:
            raise InvalidInputError(f"no job with id {', '.join(map(str, missing))}")

    def _require(self, ids: Sequence[int]) -> builtins.list[Job]:
        jobs = self.get_many(ids)
        self.check_ids([i for i in ids if i not in jobs])
        return [jobs[i] for i in ids]

    # -- what users ask for: the owner of an active row hears of it on its next heartbeat ----

    def pause(self, *ids: int, wait: float = 5.0) -> builtins.list[Job]:
        """Pause queued and active jobs; wait (up to ``wait`` s) until active ones have stopped."""
        self.check_ids(ids)
        with self._store.transaction() as conn:
            conn.executemany("UPDATE jobs SET state = 'paused', updated = ? WHERE id = ? AND state IN ('queued', 'active')",
                             [(time.time(), job_id) for job_id in ids])
        self._wait_released(ids, wait)
        return self._require(ids)

    def resume(self, *ids: int, url: str | Sequence[str] | None = None) -> builtins.list[Job]:
        """Put paused, failed or interrupted jobs back to ``queued`` (done and active ones are left).

        A job whose owner has not yet stopped for a pause stays with that owner, which
        then simply goes on (see ownership.py). ``url`` (one job only) replaces its URLs,
        such as an expired presigned URL: the partial data belongs to the file, not to
        the URL, so the engine resumes it when the new URL serves the same file.
        """
        self.check_ids(ids)
        if url is not None:
            self._replace_urls(ids, check_urls(url))
        with self._store.transaction() as conn:
            conn.executemany("UPDATE jobs SET state = 'queued', error = NULL, updated = ?"
                             " WHERE id = ? AND state IN ('paused', 'failed', 'queued')",
                             [(time.time(), job_id) for job_id in ids])
        return self._require(ids)

    def _replace_urls(self, ids: Sequence[int], urls: Sequence[str]) -> None:
        if len(ids) != 1:
            raise InvalidInputError("a new URL is for one job at a time")
        self.reap()
        with self._store.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (ids[0],)).fetchone()
            if row["state"] not in RESUMABLE or row["owner"] is not None:
                raise InvalidInputError(f"job {ids[0]} is {row['state']}"
                                        f"{' in another process' if row['owner'] else ''}: its URL cannot change now"
                                        f"{'; pause it first' if row['state'] == 'active' else ''}")
            request = json.loads(row["request"])
            request[0] = urls[0]
            conn.execute("UPDATE jobs SET urls = ?, request = ?, updated = ? WHERE id = ?",
                         (json.dumps(list(urls)), json.dumps(request), time.time(), ids[0]))

    def move(self, job_id: int, offset: int, how: str = "set") -> int:
        """Move a waiting (queued or paused) job in line and return its new position (0: the
        front), as aria2's changePosition: to ``offset`` from the front (``set``), by ``offset``
        from where it is (``cur``), or to ``offset`` from the last place (``end``, so ``0`` is
        the end), kept within the line. Queued jobs start in line order; jobs added later join
        at the end. InvalidInputError if the job is not waiting."""
        if how not in MOVES:
            raise InvalidInputError(f"unknown way to move {how!r} (one of {', '.join(MOVES)})")
        with self._store.transaction() as conn:
            return store.move(conn, job_id, offset, how)

    def remove(self, *ids: int, delete: bool = False, wait: float = 5.0) -> None:
        """Drop jobs, stopping active ones; ``delete`` also deletes their partial data.

        A job someone alive still owns is only marked: its owner stops it, then drops
        the row and (with ``delete``) the partial files itself, so nothing is deleted
        while still being written. A finished file is never deleted.
        """
        self.check_ids(ids)
        doomed: list[Path] = []
        with self._store.transaction() as conn:
            now = time.time()
            for job_id in ids:
                row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if ownership.live_owner(row):
                    conn.execute("UPDATE jobs SET cancel = ?, updated = ? WHERE id = ?",
                                 ("delete" if delete else "remove", now, job_id))
                else:
                    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                    if delete:
                        doomed += partial_files(row["dest"], row["dest_is_dir"])
        _unlink(doomed)
        self._wait_released(ids, wait)

    def _wait_released(self, ids: Sequence[int], wait: float) -> None:
        """Poll until none of ``ids`` is still being stopped by its owner (or ``wait`` runs out)."""
        deadline = time.monotonic() + wait
        while ids:
            self.reap()
            busy = self._store.rows(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND owner IS NOT NULL"
                " AND (state != 'active' OR cancel IS NOT NULL)", (_json_ids(ids),))
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    # -- claiming and reporting: the runner's side of ownership.py ----------------------------

    def reap(self) -> None:
        """Finish what gone owners left half done: removal tombstones, and pauses they never saw."""
        if not ownership.orphans_left(self._store.rows(ownership.ORPHANS)):
            return
        with self._store.transaction() as conn:
            doomed = ownership.reap(conn)
        _unlink(doomed)

    def claim(self, owner: str, ids: Sequence[int] | None = None) -> Job | None:
        """Take the next claimable job (among ``ids``, if given) for ``owner``."""
        with self._store.transaction() as conn:
            return ownership.claim(conn, owner, ids)

    def heartbeat(self, owner: str, reports: Mapping[int, ownership.Report]) -> dict[int, str]:
        """Record progress ``{id: (bytes_done, total, path)}`` of owned jobs; return why any must stop."""
        with self._store.transaction() as conn:
            return ownership.heartbeat(conn, owner, reports)

    def settle(self, owner: str, job_id: int, state: str | None, **fields: Any) -> str | None:
        """Record how an owned job ended and release it; the row's state afterwards (None if gone).

        A done job keeps what its file was verified against (``digest``, ``digest_source``)
        with its options, for ``list --json`` and ``show``.
        """
        return self.exchange(owner, [(job_id, state, fields)], 0)[0][0]

    def exchange(self, owner: str, endings: Sequence[tuple[int, str | None, Mapping[str, Any]]], count: int,
                 ids: Sequence[int] | None = None) -> tuple[builtins.list[str | None], builtins.list[Job]]:
        """``settle`` each of ``endings`` (id, state, fields), then claim up to ``count`` jobs, in one
        transaction: a runner's traffic with the database costs one round trip however many jobs end."""
        doomed: list[Path] = []
        with self._store.transaction() as conn:
            afters = []
            for job_id, state, fields in endings:
                after, gone = _settle(conn, owner, job_id, state, dict(fields))
                afters.append(after)
                doomed += gone
            jobs = ownership.claim_many(conn, owner, count, ids) if count > 0 else []
        _unlink(doomed)
        return afters, jobs

    # -- running ----------------------------------------------------------------------------

    def run(self, jobs: int = 4, **kwargs: Any) -> dict[int, Outcome]:
        """Blocking ``arun``."""
        import asyncio

        return asyncio.run(self.arun(jobs, **kwargs))

    async def arun(
        self,
        jobs: int = 4,
        *,
        ids: Sequence[int] | None = None,
        limit_rate: int | str | None = None,
        listener: "Listener | None" = None,
        engine_factory: Callable[..., Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        on_done: str | None = None,
        on_fail: str | None = None,
    ) -> dict[int, Outcome]:
        """Download queued jobs, ``jobs`` at once, until none is left; return how each one ended.

        With ``ids``, only those jobs, waiting for any that another process is
        downloading, and returning once all of them have ended. Cancelling the
        task stops the downloads (partial data kept), puts them back to
        ``queued`` and re-raises CancelledError.

        ``engine_options`` are engine options that cannot be stored with a job (``auth``,
        ``client``, ``event_hooks``, a cookie jar, ...): they apply to every download of
        this run. ``on_done``/``on_fail`` are hooks for the jobs that have none of their own.
        """
        import asyncio

        from dlman.hooks import Hooks, parse_hook
        from dlman.queue.runner import Runner

        if jobs < 1:
            raise InvalidInputError(f"jobs must be at least 1, got {jobs}")
        for hook in (on_done, on_fail):
            if hook:
                parse_hook(hook)
        live = _check_engine_options(engine_options or {})
        hooks = Hooks(on_done, on_fail)
        if ids is not None:  # offered to claims a window at a time: the windows follow the line
            ids = await asyncio.get_running_loop().run_in_executor(None, self._in_line_order, ids)
        runner = Runner(self, jobs, ids, limit_rate, _Listeners(listener, hooks),
                        _engine_maker(engine_factory or _default_engine, live))
        outcomes = await runner.run()
        while hooks.running():  # polled: the default executor may be busy with file writes
            await asyncio.sleep(0.05)
        return outcomes
