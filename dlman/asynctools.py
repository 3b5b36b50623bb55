"""Two asyncio helpers that keep cleanup and deadlines honest under cancellation.

An embedding program may cancel a task again at every await until it ends (anyio's cancel
scopes: Starlette, FastAPI), and ``asyncio.wait_for`` before Python 3.12 loses a cancel that
arrives just as the awaited call finishes. Cleanup that must finish (stopping connections,
the last state save, publishing) goes through ``uninterrupted``; waits with a deadline go
through ``within``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def uninterrupted(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end however often the caller is cancelled meanwhile.

    A cancel that arrived is raised once the work is done, so the caller still stops.
    """
    task = asyncio.ensure_future(coroutine)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError()
    return result


async def within(seconds: float, coroutine: Coroutine[Any, Any, T],
                 discard: Callable[[T], Awaitable[object]]) -> T:
    """``coroutine``'s result if it comes within ``seconds`` (``asyncio.TimeoutError`` otherwise).

    Unlike ``asyncio.wait_for`` on Python 3.10 and 3.11, a cancel of the caller is never
    swallowed: if it arrives as the result does, the result is handed to ``discard`` (to close
    a response, say) and the cancel goes on.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        await uninterrupted(_abandon(task, discard))
        raise
    if not done:
        await uninterrupted(_abandon(task, discard))
        raise asyncio.TimeoutError()
    return task.result()


async def _abandon(task: asyncio.Future[T], discard: Callable[[T], Awaitable[object]]) -> None:
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is None:
        await discard(task.result())
