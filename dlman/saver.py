"""The saver: progress reported every ``PROGRESS_INTERVAL``, the state saved every save interval.

A failed save is logged and tried again; ``SAVE_FAILURES`` in a row fail the download (raised
from the task, which the transfer waits on with its connections). ``stop`` lets a save in
flight finish, so no state file is written after the file was published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from dlman.errors import DownloadError

log = logging.getLogger("dlman")

PROGRESS_INTERVAL = 0.2
SAVE_FAILURES = 5              # consecutive failed state saves before the download fails


class Saver:
    """Runs ``report`` every ``PROGRESS_INTERVAL`` and ``save`` every ``interval`` seconds, as a task."""

    def __init__(self, report: Callable[[], None], save: Callable[[], Awaitable[None]], interval: float) -> None:
        self.report = report
        self.save = save
        self.interval = interval
        self._stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last_save = time.monotonic()
        failures = 0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), PROGRESS_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
            self.report()
            if time.monotonic() - last_save < self.interval:
                continue
            try:
                await self.save()
                failures = 0
            except DownloadError as exc:
                failures += 1
                if failures >= SAVE_FAILURES:
                    raise
                log.warning("%s (the state will be saved again)", exc)
            last_save = time.monotonic()

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.wait([self.task])
        if not self.task.cancelled():
            self.task.exception()  # already raised to the transfer if it failed
