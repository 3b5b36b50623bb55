"""The persistent job queue, shared by the command line and the Python API.

Where each rule lives:

* ``store.py``: the SQLite file: connection, schema and its migrations, transactions,
  waiting out "database is locked";
* ``jobs.py``: what a job is (Job, NewJob, ``prepare``, Outcome) and the pure rules about
  jobs, such as when a finished job asked for again stays done;
* ``ownership.py``: who owns an active row, when an owner is gone, and what claim,
  heartbeat, settle and reap may do;
* ``runner.py``: one run: claims jobs, drives the engine, reports how each ended;
* here: ``Queue``, the operations a user asks for (add, list, pause, resume, remove, run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dlman.errors import InvalidInputError
from dlman.home import prepare_home, resolve_home
from dlman.options import redact
from dlman.queue import ownership, store
from dlman.queue.jobs import STATES, Job, NewJob, Outcome, partial_files, prepare
from dlman.queue.ownership import HOST, STALE_AFTER, TICK
from dlman.queue.runner import Listener, Runner
from dlman.queue.store import Store

__all__ = ["HOST", "STALE_AFTER", "STATES", "TICK", "Job", "Listener", "NewJob", "Outcome", "Queue", "prepare",
           "redact"]

log = logging.getLogger("dlman")

PAGE = 500  # rows per read while listing: memory stays flat however long the queue


def _default_engine(**options: Any) -> Any:
    from dlman.engine import Engine

    return Engine(**options)


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("could not delete %s: %s", path, error.strerror or error)


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
        """Every job (or those in ``state``) in id order, read a page at a time.

        Memory stays flat however long the queue is, and no read is held open
        between pages, so writers are never kept waiting by a slow consumer.
        """
        if state is not None and state not in STATES:
            raise InvalidInputError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return self._pages(state)

    def _pages(self, state: str | None) -> Iterator[Job]:
        only = "" if state is None else " AND state = ?"
        after = 0
        while True:
            params = ([] if state is None else [state]) + [after, PAGE]
            rows = self._store.rows(f"SELECT * FROM jobs WHERE cancel IS NULL{only} AND id > ? ORDER BY id LIMIT ?",
                                    params)
            yield from map(Job.from_row, rows)
            if len(rows) < PAGE:
                return
            after = rows[-1]["id"]

    def list(self, state: str | None = None) -> list[Job]:
        """Every job (or those in ``state``), in id order; ``iter_jobs`` streams them instead."""
        return list(self.iter_jobs(state))

    def check_ids(self, ids: Sequence[int]) -> None:
        """InvalidInputError naming every id that is not in the queue."""
        present = {row["id"] for row in self._store.rows(
            "SELECT id FROM jobs WHERE cancel IS NULL AND id IN (SELECT value FROM json_each(?))", (_json_ids(ids),))}
        missing = [i for i in ids if i not in present]
        if missing:
            raise InvalidInputError(f"no job with id {', '.join(map(str, missing))}")

    def _require(self, ids: Sequence[int]) -> list[Job]:
        jobs = self.get_many(ids)
        self.check_ids([i for i in ids if i not in jobs])
        return [jobs[i] for i in ids]

    # -- what users ask for: the owner of an active row hears of it on its next heartbeat ----

    def pause(self, *ids: int, wait: float = 5.0) -> list[Job]:
        """Pause queued and active jobs; wait (up to ``wait`` s) until active ones have stopped."""
        self.check_ids(ids)
        with self._store.transaction() as conn:
            conn.executemany("UPDATE jobs SET state = 'paused', updated = ? WHERE id = ? AND state IN ('queued', 'active')",
                             [(time.time(), job_id) for job_id in ids])
        self._wait_released(ids, wait)
        return self._require(ids)

    def resume(self, *ids: int) -> list[Job]:
        """Put paused, failed or interrupted jobs back to ``queued`` (done and active ones are left).

        A job whose owner has not yet stopped for a pause stays with that owner, which
        then simply goes on (see ownership.py).
        """
        self.check_ids(ids)
        with self._store.transaction() as conn:
            conn.executemany("UPDATE jobs SET state = 'queued', error = NULL, updated = ?"
                             " WHERE id = ? AND state IN ('paused', 'failed', 'queued')",
                             [(time.time(), job_id) for job_id in ids])
        return self._require(ids)

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
        """Take the oldest claimable job (among ``ids``, if given) for ``owner``."""
        with self._store.transaction() as conn:
            return ownership.claim(conn, owner, ids)

    def heartbeat(self, owner: str, reports: Mapping[int, ownership.Report]) -> dict[int, str]:
        """Record progress ``{id: (bytes_done, total, path)}`` of owned jobs; return why any must stop."""
        with self._store.transaction() as conn:
            return ownership.heartbeat(conn, owner, reports)

    def settle(self, owner: str, job_id: int, state: str | None, **fields: Any) -> str | None:
        """Record how an owned job ended and release it; the row's state afterwards (None if gone)."""
        with self._store.transaction() as conn:
            after, doomed = ownership.settle(conn, owner, job_id, state, fields)
        _unlink(doomed)
        return after

    def exchange(self, owner: str, endings: Sequence[tuple[int, str | None, Mapping[str, Any]]], count: int,
                 ids: Sequence[int] | None = None) -> tuple[list[str | None], list[Job]]:
        """``settle`` each of ``endings`` (id, state, fields), then claim up to ``count`` jobs, in one
        transaction: a runner's traffic with the database costs one round trip however many jobs end."""
        doomed: list[Path] = []
        with self._store.transaction() as conn:
            afters = []
            for job_id, state, fields in endings:
                after, gone = ownership.settle(conn, owner, job_id, state, fields)
                afters.append(after)
                doomed += gone
            jobs = ownership.claim_many(conn, owner, count, ids) if count > 0 else []
        _unlink(doomed)
        return afters, jobs

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
        runner = Runner(self, jobs, ids, limit_rate, listener, engine_factory or _default_engine)
        return await runner.run()
