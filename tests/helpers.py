"""Small helpers shared by the integration tests: polling with a deadline, reading state."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import dlman

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def saved_bytes(dest: Path) -> int:
    """Bytes the resume state of ``dest`` claims are on disk (0 when there is no state yet)."""
    state = dest.with_name(dest.name + ".part.state")
    try:
        raw = json.loads(state.read_bytes())
    except (OSError, ValueError):
        return 0
    return raw["size"] - sum(b - a for a, b in raw["missing"])


def fetch(url: str | list[str], dest: Path | str, **options: Any) -> dlman.DownloadResult:
    """A blocking download with a short timeout, so a failing test fails fast."""
    options.setdefault("timeout", 5)
    return dlman.download(url, dest, **options)


async def interrupt_when(task: asyncio.Task[Any], dest: Path, at_least: int, timeout: float = 30) -> None:
    """Cancel ``task`` once the state of ``dest`` claims ``at_least`` bytes (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while saved_bytes(dest) < at_least:
        assert not task.done(), "the download ended before it could be interrupted"
        assert time.monotonic() < deadline, "no progress was saved in time"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def start_and_cancel(url: str | list[str], dest: Path, at_least: int, **options: Any) -> None:
    """Download until the state claims ``at_least`` bytes, then cancel (as Ctrl-C would)."""
    async def main() -> None:
        async with dlman.Engine(timeout=5, **options) as engine:
            await interrupt_when(asyncio.create_task(engine.download(url, dest)), dest, at_least)
    asyncio.run(main())
