"""The daemon's core: the queue run for ever, what is live, and events for those who listen.

The queue's runner returns when nothing is left to claim; the service runs it again at once
when one of its own clients adds or resumes a job, and otherwise after ``IDLE`` seconds, so
jobs added by other processes (``dlman add --later``) are picked up too. It is the runner's
listener: it keeps each running job's last progress and speed, and turns starts and ends
into aria2's notifications. Every queue call goes to one thread of its own, so the event
loop that serves the clients never waits on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from dlman.errors import InvalidInputError
from dlman.manifest import parse_manifest
from dlman.queue import Job, NewJob, Outcome, Queue, prepare
from dlman.server import aria2
from dlman.server.aria2 import View
from dlman.server.config import ServeConfig
from dlman.server.paths import place
from dlman.server.speed import SpeedMeter, eta

if TYPE_CHECKING:
    from dlman.result import Progress

log = logging.getLogger("dlman.server")
T = TypeVar("T")

IDLE = 1.0            # seconds between looks for jobs added by other processes while idle
KEEP_REMOVED = 1000   # removed downloads remembered for tellStopped (aria2's --max-download-result)
EVENTS = 1000         # events a slow listener may fall behind by before it misses some

ENDED = {"done": "aria2.onDownloadComplete", "failed": "aria2.onDownloadError",
         "paused": "aria2.onDownloadPause", "removed": "aria2.onDownloadStop"}


@dataclass
class _Live:
    job: Job
    progress: "Progress | None" = None


class Service:
    """The queue, run for ever, and everything the APIs ask of it."""

    def __init__(self, config: ServeConfig, home: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        self.jobs = config.jobs
        self.limit_rate = config.limit_rate
        self.queue = Queue(home)
        self._runner_queue = Queue(home)  # its own connection: API reads never wait behind heartbeats
        self.session_id = secrets.token_hex(20)
        self.live: dict[int, _Live] = {}
        self.meters: dict[int, SpeedMeter] = {}
        self.removed: OrderedDict[int, View] = OrderedDict()
        self.stopped_total = 0
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._api = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlman-api")
        self._wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self._run: asyncio.Task[Any] | None = None
        self._restarting = False

    # -- running -----------------------------------------------------------------------------

    async def db(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A queue call on the service's database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._api, functools.partial(method, *args, **kwargs))

    async def run(self) -> None:
        """Run the queue until ``stop``: again whenever it runs out of work, and on a wake-up."""
        while not self.stopping.is_set():
            self._wake.clear()
            self._run = asyncio.create_task(self._runner_queue.arun(
                self.jobs, limit_rate=self.limit_rate, listener=self))
            try:
                await self._run
            except asyncio.CancelledError:
                if not self._restarting or self.stopping.is_set():
                    raise
                self._restarting = False
                continue
            except Exception as error:  # noqa: BLE001 - the daemon outlives one bad run
                log.error("the queue's runner stopped: %s; starting it again", error, exc_info=error)
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE)
            except asyncio.TimeoutError:
                pass

    def wake(self) -> None:
        self._wake.set()

    def reconfigure(self, jobs: int | None = None, limit_rate: int | None = None) -> None:
        """New ``-j`` or rate limit: the runner is restarted with them (downloads resume)."""
        changed = False
        if jobs is not None and jobs != self.jobs:
            self.jobs, changed = jobs, True
        if limit_rate is not None and (limit_rate or None) != self.limit_rate:
            self.limit_rate, changed = limit_rate or None, True
        if changed and self._run is not None and not self._run.done():
            self._restarting = True
            self._run.cancel()
        elif changed:
            self.wake()

    def close(self) -> None:
        self._api.shutdown(wait=True)
        self.queue.close()
        self._runner_queue.close()

    # -- the runner's listener -----------------------------------------------------------------

    def started(self, job: Job) -> None:
        self.live[job.id] = _Live(job)
        self.meters[job.id] = SpeedMeter()
        self.publish(aria2.notification("aria2.onDownloadStart", job.id))

    def progress(self, job: Job, progress: "Progress") -> None:
        live = self.live.get(job.id)
        if live is not None:
            live.progress = progress
            self.meters.setdefault(job.id, SpeedMeter()).observe(time.monotonic(), progress.downloaded)

    def ended(self, outcome: Outcome) -> None:
        self.live.pop(outcome.job_id, None)
        self.meters.pop(outcome.job_id, None)
        method = ENDED.get(outcome.state)
        if method is None:  # interrupted: the daemon is stopping or restarting its runner
            return
        if outcome.state != "paused":
            self.stopped_total += 1
        self.publish(aria2.notification(method, outcome.job_id))

    # -- events ----------------------------------------------------------------------------------

    def listen(self) -> "asyncio.Queue[dict[str, Any]]":
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENTS)
        self._listeners.add(events)
        return events

    def unlisten(self, events: "asyncio.Queue[dict[str, Any]]") -> None:
        self._listeners.discard(events)

    def publish(self, event: dict[str, Any]) -> None:
        for events in list(self._listeners):
            try:
                events.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("a listener is too slow: it misses %s", event.get("method"))

    # -- views -------------------------------------------------------------------------------------

    def view(self, job: Job) -> View:
        """The job as aria2's results describe it, with what is live merged in."""
        live = self.live.get(job.id)
        progress = live.progress if live else None
        done = progress.downloaded if progress else job.bytes_done
        total = progress.total if progress and progress.total is not None else job.total_bytes
        if progress and progress.path:
            path = str(progress.path)
        else:
            path = "" if job.dest_is_dir else job.dest
        directory = job.dest if job.dest_is_dir and not path else os.path.dirname(path or job.dest)
        speed = connections = 0
        if job.state == "active":
            now = time.monotonic()
            meter = self.meters.setdefault(job.id, SpeedMeter())
            if live is None:  # another process downloads it: its heartbeats are our samples
                meter.observe(now, job.bytes_done)
            speed = meter.rate(now)
            connections = progress.connections if progress else 0
        return View(job.id, aria2.STATUS[job.state], job.urls, directory, path, total or 0, done, speed,
                    connections, job.error, job.options, job.output,
                    started=job.state in ("active", "done", "failed") or job.bytes_done > 0)

    async def views(self, states: Sequence[str] | None = None) -> list[View]:
        """Every job (or those in ``states``), in id order; ``waiting`` lists the waiting line."""
        if states is None:
            jobs = await self.db(self.queue.list)
        else:
            jobs = []
            for state in states:
                jobs += await self.db(self.queue.list, state)
            jobs.sort(key=lambda job: job.id)
        return [self.view(job) for job in jobs]

    async def waiting(self) -> list[View]:
        """aria2's waiting queue: queued and paused jobs in line order (the order queued ones start)."""
        return [self.view(job) for job in await self.db(self.queue.waiting)]

    async def find(self, job_id: int) -> View | None:
        """A job's view, or a removed one's record, or None."""
        job = await self.db(self.queue.get, job_id)
        if job is not None:
            return self.view(job)
        return self.removed.get(job_id)

    async def stopped(self) -> list[View]:
        """aria2's stopped list: finished, failed and removed downloads, oldest end first."""
        jobs = await self.db(self.queue.list, "done") + await self.db(self.queue.list, "failed")
        jobs.sort(key=lambda job: (job.updated, job.id))
        return [self.view(job) for job in jobs] + list(self.removed.values())

    async def global_stat(self) -> dict[str, int]:
        active = await self.views(["active"])
        waiting = len(await self.db(self.queue.list, "queued")) + len(await self.db(self.queue.list, "paused"))
        stopped = len(await self.stopped())
        return {"downloadSpeed": sum(v.speed for v in active), "numActive": len(active), "numWaiting": waiting,
                "numStopped": stopped, "numStoppedTotal": self.stopped_total + len(self.removed)}

    # -- what clients ask for --------------------------------------------------------------------------

    def plan(self, urls: str | Sequence[str], directory: str | None, out: str | None,
             options: dict[str, Any]) -> NewJob:
        """A job from the network, checked: inside the download roots, no overwrite unless allowed."""
        if options.get("overwrite") and not self.config.allow_overwrite:
            raise InvalidInputError("overwriting existing files is refused: the daemon was not started with "
                                    "--allow-overwrite")
        real, name = place(self.config.roots, directory, out)
        return prepare(urls, real + os.sep, output=name, **options)

    def plan_manifest(self, text: str, directory: str | None, options: dict[str, Any]) -> list[NewJob]:
        """Every entry of a manifest, checked before anything is added."""
        entries = parse_manifest(text, "manifest")
        planned = []
        for entry in entries:
            where = os.path.join(directory or "", entry.dir) if entry.dir else directory
            own = dict(options)
            own["headers"] = list(options.get("headers", [])) + list(entry.headers)
            if entry.connections is not None:
                own["connections"] = entry.connections
            if entry.checksum is not None:
                own["checksum"] = entry.checksum
            planned.append(self.plan(list(entry.urls), where, entry.out, own))
        if not planned:
            raise InvalidInputError("the manifest holds no URL")
        return planned

    async def add(self, new_jobs: Sequence[NewJob], position: int | None = None) -> list[Job]:
        """Add jobs; with ``position``, the first one goes to that place in the waiting line (if it is
        waiting: a job asked for again may be running or done, and a free slot may have taken it)."""
        jobs = await self.db(self.queue.add_many, new_jobs)
        if position is not None and jobs:
            with contextlib.suppress(InvalidInputError):
                await self.move(jobs[0].id, position, "set")
        self.wake()
        return jobs

    async def move(self, job_id: int, offset: int, how: str) -> int:
        """Move a waiting job in line (``Queue.move``); its new position."""
        return await self.db(self.queue.move, job_id, offset, how)

    async def pause(self, ids: Iterable[int]) -> None:
        """Pause jobs; those not running here are announced now, running ones when they stop."""
        ids = list(ids)
        if not ids:
            return
        await self.db(self.queue.pause, *ids, wait=0)
        for job_id in ids:
            if job_id not in self.live:
                self.publish(aria2.notification("aria2.onDownloadPause", job_id))

    async def resume(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            await self.db(self.queue.resume, *ids)
            self.wake()

    async def remove(self, ids: Iterable[int], delete: bool = False) -> None:
        """Remove jobs, remembering each as aria2's "removed" download."""
        wanted = list(ids)
        found = await self.db(self.queue.get_many, wanted)
        jobs = [found[i] for i in wanted if i in found]
        if not jobs:
            return
        for job in jobs:
            self.removed[job.id] = replace(self.view(job), status="removed", speed=0, connections=0)
            while len(self.removed) > KEEP_REMOVED:
                self.removed.popitem(last=False)
        await self.db(self.queue.remove, *(job.id for job in jobs), delete=delete, wait=0)
        for job in jobs:
            if job.id not in self.live:
                self.stopped_total += 1
                self.publish(aria2.notification("aria2.onDownloadStop", job.id))

    async def forget(self, ids: Iterable[int]) -> None:
        """Drop finished or failed jobs (their files stay) and removed records."""
        ids = list(ids)
        for job_id in ids:
            self.removed.pop(job_id, None)
        present = await self.db(self.queue.get_many, ids)
        if present:
            await self.db(self.queue.remove, *present)

    async def reask(self, job: Job, urls: Sequence[str], options: dict[str, Any]) -> None:
        """Change a job's URLs or options by asking for the same request again (the queue keeps
        one job per request: same first URL and target). A running job is paused first and
        picks up again; a paused one stays paused."""
        if urls[0] != job.url:
            raise InvalidInputError("the first URI names the download in dlman's queue: it cannot be removed")
        if job.output:
            new = NewJob(tuple(urls), job.dest, False, job.output, options)
        else:  # asked for as a directory: the file name came later
            directory = job.dest if job.dest_is_dir else os.path.dirname(job.dest)
            new = NewJob(tuple(urls), directory, True, None, options)
        was = job.state
        if was == "active":
            await self.db(self.queue.pause, job.id, wait=5.0)
        again = await self.db(self.queue.add_many, [new])
        if again[0].id != job.id:
            await self.db(self.queue.remove, again[0].id)
            raise InvalidInputError(f"cannot change download {aria2.to_gid(job.id)}: it was not added by a "
                                    "directory and name")
        if was == "paused":
            await self.db(self.queue.pause, job.id, wait=0)
        self.wake()

    async def jobs_info(self) -> list[dict[str, Any]]:
        """The REST view of every job: the queue's public fields plus what is live."""
        jobs = await self.db(self.queue.list)
        return [info(job, self.view(job)) for job in jobs]


def info(job: Job, view: View) -> dict[str, Any]:
    """One job for the REST API and the page: ``list --json``'s fields, the GID, speed and ETA."""
    data = job.to_dict()
    data.update(gid=view.gid, bytes_done=view.done, total_bytes=view.total or job.total_bytes,
                speed=view.speed, connections=view.connections, path=view.path or None,
                eta=eta(view.total, view.done, view.speed))
    return data

