"""The runner: claims jobs, drives one engine task per job, and keeps their rows current.

One run is one owner (see ownership.py). Every database call goes through a single thread
of its own, never asyncio's default executor: that one is shared with file writes, fsyncs
and digests, and a heartbeat queued behind them would arrive late.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dlman.errors import DownloadError
from dlman.options import redact
from dlman.queue.jobs import DOWNLOAD_KEYS, ENGINE_KEYS, Job, Outcome
from dlman.queue.ownership import HOST, TICK, Report

if TYPE_CHECKING:
    from dlman.engine import Engine
    from dlman.queue import Queue
    from dlman.result import DownloadResult, Progress

log = logging.getLogger("dlman")
T = TypeVar("T")

WINDOW = 256  # ids offered to one claim: a claim's cost must not grow with a long list of ids


class Listener(Protocol):
    """What a display needs from the runner (see dlman.progress)."""

    def started(self, job: Job) -> None: ...
    def progress(self, job: Job, progress: "Progress") -> None: ...
    def ended(self, outcome: Outcome) -> None: ...


class Wanted:
    """The jobs an ``ids`` run answers for that have not ended yet, in the order given.

    ``untried`` are offered to claims a window at a time; ``waiting`` were offered and
    found unclaimable (someone else has them, or they are paused or done), so they are
    looked at once per tick and offered again while they have not ended.
    """

    def __init__(self, ids: Sequence[int]) -> None:
        self.untried: deque[int] = deque(dict.fromkeys(ids))
        self.waiting: dict[int, None] = {}

    def __bool__(self) -> bool:
        return bool(self.untried or self.waiting)

    def window(self) -> list[int]:
        """Take the next ids to offer a claim; hand back what it did not take with ``offered``."""
        return [self.untried.popleft() for _ in range(min(WINDOW, len(self.untried)))]

    def offered(self, window: Sequence[int], claimed: Sequence[int], asked: int) -> None:
        """A claim for ``asked`` jobs among ``window`` took ``claimed``: if it took fewer, none of
        the rest was claimable (they wait); else the rest is offered first to the next claim."""
        taken = set(claimed)
        rest = [i for i in window if i not in taken]
        if len(claimed) < asked:
            self.waiting.update(dict.fromkeys(rest))
        else:
            self.untried.extendleft(reversed(rest))

    def wait_for(self, job_id: int) -> None:
        """A job we held but lost to another owner: its end is watched like any other's."""
        self.waiting[job_id] = None

    def retry(self, ids: Sequence[int]) -> None:
        """Offer these (not ended) waiting ids to claims again, ahead of the untried ones."""
        for job_id in ids:
            self.waiting.pop(job_id, None)
        self.untried.extendleft(reversed(ids))


@dataclass
class _Active:
    job: Job
    task: "asyncio.Task[DownloadResult] | None" = None
    progress: "Progress | None" = None
    stop: str | None = None  # why we cancelled it


class Runner:
    """One run over the queue: ``jobs`` downloads at once until nothing is left to claim."""

    def __init__(self, queue: "Queue", jobs: int, ids: Sequence[int] | None, limit_rate: int | str | None,
                 listener: Listener | None, engine_factory: Callable[..., Any]) -> None:
        self.queue = queue
        self.jobs = jobs
        self.wanted = None if ids is None else Wanted(ids)
        self.limit_rate = limit_rate
        self.listener = listener
        self.engine_factory = engine_factory
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}"
        self.active: dict[int, _Active] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.engines: dict[tuple[Any, ...], Engine] = {}
        self.engine_lock = asyncio.Lock()
        self.made: dict[str, asyncio.Future[None]] = {}  # directories this run creates (or found)
        self.database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlman-queue")
        self.stack = AsyncExitStack()

    async def _db(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A queue call on the database thread, so neither a busy database nor busy disks delay it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.database, functools.partial(method, *args, **kwargs))

    async def run(self) -> dict[int, Outcome]:
        try:
            await self._db(self.queue.reap)
            async with self.stack:
                try:
                    await self._loop()
                except BaseException:
                    await _uninterrupted(self._shutdown())
                    raise
        finally:
            self.database.shutdown(wait=False)
        return self.outcomes

    async def _loop(self) -> None:
        # Heartbeats and watching other processes' jobs run once per TICK, not on every
        # finished download: with many small files that would be a database call per file.
        # Finished jobs are settled and their slots filled in one transaction (``_exchange``).
        last_tick = -TICK
        finished: list[_Active] = []
        while True:
            exhausted = await self._exchange(finished)
            now = time.monotonic()
            if now - last_tick >= TICK:
                last_tick = now
                await self._tick()
                await self._watch_others()
            finished = [a for a in self.active.values() if a.task is not None and a.task.done()]
            if finished:
                continue  # settle them and fill their slots at once
            if not self.active and exhausted and not self.wanted:
                return
            if not exhausted and len(self.active) < self.jobs:
                continue  # a slot is free and more may be claimable: no reason to wait
            tasks = [a.task for a in self.active.values() if a.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(TICK)

    async def _exchange(self, finished: Sequence[_Active], *, claim: bool = True) -> bool:
        """Settle ``finished`` jobs and claim one for every free slot, in one transaction (more only
        when a window of ids runs dry); True when nothing more could be claimed."""
        settling = []
        for entry in finished:
            del self.active[entry.job.id]
            ending = self._ending(entry)
            if ending is not None:
                settling.append((entry, ending))
        exhausted = requeued = False
        while True:
            free = self.jobs - len(self.active) if claim else 0
            window = None
            if free > 0 and self.wanted is not None:
                window = self.wanted.window()
                if not window:
                    exhausted, free = True, 0
            if free <= 0 and not settling:
                return exhausted and not requeued
            afters, jobs = await self._traffic(settling, free, window)
            for (entry, ending), after in zip(settling, afters):
                requeued |= self._settled(entry, ending, after)
            settling = []
            if window is not None:
                assert self.wanted is not None
                self.wanted.offered(window, [job.id for job in jobs], free)
            for job in jobs:
                self._start(job)
            if free <= 0:
                return exhausted and not requeued
            if self.wanted is None and len(jobs) < free:
                return not requeued  # the queue has nothing more for us

    async def _traffic(self, settling: Sequence[tuple[_Active, "_Ending"]], count: int,
                       window: Sequence[int] | None) -> tuple[list[str | None], list[Job]]:
        """One ``Queue.exchange``; if cancelled meanwhile, finish its work and give back what it claimed.

        The call goes on in the database thread whatever happens here, and a job
        claimed by a live process is nobody else's: forgetting it would strand it.
        """
        endings = [(entry.job.id, state, fields) for entry, (state, fields) in settling]
        call = asyncio.ensure_future(self._db(self.queue.exchange, self.owner, endings, count, window))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await _uninterrupted(self._give_back(call, settling))
            raise

    async def _give_back(self, call: "asyncio.Future[tuple[list[str | None], list[Job]]]",
                         settling: Sequence[tuple[_Active, "_Ending"]]) -> None:
        afters, jobs = await call
        for (entry, ending), after in zip(settling, afters):
            self._settled(entry, ending, after)
        if jobs:
            await self._db(self.queue.exchange, self.owner, [(job.id, "queued", {}) for job in jobs], 0)

    def _start(self, job: Job) -> None:
        entry = _Active(job)
        entry.task = asyncio.create_task(self._download(entry), name=f"dlman-job-{job.id}")
        self.active[job.id] = entry
        if self.listener:
            self.listener.started(job)

    async def _engine(self, options: Mapping[str, Any]) -> "Engine":
        """One engine per distinct engine-level configuration, shared by the jobs that use it."""
        config = {key: options[key] for key in ENGINE_KEYS if key in options}
        key = tuple(sorted(config.items()))
        async with self.engine_lock:
            if key not in self.engines:
                engine = self.engine_factory(limit_rate=self.limit_rate, **config)
                self.engines[key] = await self.stack.enter_async_context(engine)
        return self.engines[key]

    async def _download(self, entry: _Active) -> "DownloadResult":
        job = entry.job
        directory = job.dest if job.dest_is_dir else os.path.dirname(job.dest)
        # Thousands of files into one directory make one thread hop, which the first jobs share.
        making = self.made.get(directory)
        if making is None:
            making = self.made[directory] = asyncio.ensure_future(
                asyncio.to_thread(os.makedirs, directory, exist_ok=True))
        try:
            await asyncio.shield(making)  # one job cancelled must not cancel it for the others
        except OSError as error:
            if self.made.get(directory) is making:
                del self.made[directory]  # the next job tries again
            raise DownloadError(
                f"cannot create directory {directory}: {error.strerror or error}", url=job.url, path=directory
            ) from None
        engine = await self._engine(job.options)
        options = {key: job.options[key] for key in DOWNLOAD_KEYS if job.options.get(key)}

        def on_progress(progress: "Progress") -> None:
            entry.progress = progress
            if self.listener:
                self.listener.progress(entry.job, progress)

        target = job.dest + os.sep if job.dest_is_dir else job.dest
        return await engine.download(list(job.urls), target, on_progress=on_progress, **options)

    async def _tick(self) -> None:
        """Heartbeat and progress for every running job; stop those paused or removed elsewhere."""
        reports: dict[int, Report] = {}
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
            if entry.task is not None and not entry.task.done():
                log.info("stopping job %d (%s)", job_id, reason)
                entry.stop = reason
                entry.task.cancel()

    async def _watch_others(self) -> None:
        """For ``ids`` runs: note the end of jobs that were not ours to download."""
        if not self.wanted or not self.wanted.waiting:
            return
        waiting = list(self.wanted.waiting)
        jobs = await self._db(self.queue.get_many, waiting)
        again = []
        for job_id in waiting:
            job = jobs.get(job_id)
            if job is None:
                self.wanted.waiting.pop(job_id)
                self._ended(Outcome(job_id, "removed", ""))
            elif job.state in ("done", "failed", "paused"):
                self.wanted.waiting.pop(job_id)
                self._ended(Outcome(job_id, job.state, job.url, path=job.dest, size=job.total_bytes,
                                    skipped=job.state == "done", error=job.error))
            else:
                again.append(job_id)
        self.wanted.retry(again)

    def _ended(self, outcome: Outcome) -> None:
        self.outcomes[outcome.job_id] = outcome
        if self.listener:
            self.listener.ended(outcome)

    def _ending(self, entry: _Active) -> "_Ending | None":
        """What to write for a finished task: its state and fields (None: the row is no longer ours)."""
        job, task = entry.job, entry.task
        assert task is not None
        progress = entry.progress
        fields: dict[str, Any] = {"bytes_done": progress.downloaded if progress else job.bytes_done,
                                  "total_bytes": progress.total if progress else job.total_bytes}
        if progress and progress.path:
            fields.update(dest=str(progress.path), dest_is_dir=0)
        if task.cancelled():
            reason = entry.stop or "shutdown"
            if reason == "lost":
                if self.wanted is not None:
                    self.wanted.wait_for(job.id)
                return None
            return ("queued" if reason == "shutdown" else None), fields
        error = task.exception()
        if error is None:
            result = task.result()
            fields.update(dest=str(result.path), dest_is_dir=0, bytes_done=result.size, total_bytes=result.size,
                          error=None, digest=result.checksum, digest_source=result.checksum_source)
            return "done", fields
        if isinstance(error, DownloadError):
            fields["error"] = redact(str(error))
        else:
            log.error("job %d: unexpected error", job.id, exc_info=error)
            fields["error"] = redact(f"internal error: {type(error).__name__}: {error}")
        return "failed", fields

    def _settled(self, entry: _Active, ending: "_Ending", after: str | None) -> bool:
        """Report how a settled job ended; True if it went back to the queue (ours to claim again)."""
        job, task = entry.job, entry.task
        assert task is not None
        state, fields = ending
        if task.cancelled():
            reason = entry.stop or "shutdown"
            if reason == "pause" and after == "queued":
                # Resumed before the stop was over: the job is anyone's again, ours included.
                if self.wanted is not None:
                    self.wanted.retry([job.id])
                return True
            if reason == "shutdown":
                named = "interrupted"
            else:
                named = "paused" if reason == "pause" and after == "paused" else "removed"
            self._ended(Outcome(job.id, named, job.url, path=fields.get("dest")))
        elif state == "done":
            result = task.result()
            self._ended(Outcome(job.id, "done", job.url, path=str(result.path), size=result.size,
                                skipped=result.skipped, digest=result.checksum, digest_source=result.checksum_source))
        else:
            self._ended(Outcome(job.id, "failed", job.url, path=fields.get("dest"), error=fields["error"]))
        return False

    async def _shutdown(self) -> None:
        """Stop every download (engines save their state) and put the jobs back to ``queued``."""
        for entry in self.active.values():
            if entry.task is not None and not entry.task.done():
                entry.stop = entry.stop or "shutdown"
                entry.task.cancel()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        await self._exchange(list(self.active.values()), claim=False)


_Ending = tuple[str | None, dict[str, Any]]  # the state a settle writes, and its fields


async def _uninterrupted(coroutine: Any) -> None:
    """Run cleanup to its end even if the caller is cancelled again meanwhile (a second Ctrl-C)."""
    task = asyncio.ensure_future(coroutine)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
    task.result()
