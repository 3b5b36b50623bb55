"""Small helpers shared by the integration tests: polling with a deadline, reading state."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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


def claimed_ranges(dest: Path) -> list[tuple[int, int]]:
    """The byte ranges ``[a, b)`` the resume state of ``dest`` claims are on disk."""
    raw = json.loads(dest.with_name(dest.name + ".part.state").read_bytes())
    claimed, at = [], 0
    for a, b in sorted(raw["missing"]) + [(raw["size"], raw["size"])]:
        if a > at:
            claimed.append((at, a))
        at = max(at, b)
    return claimed


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


# The child reports the high-water mark of its own address space (VmHWM) as it exits. Its
# ru_maxrss would not do: Linux carries into it the peak RSS of the process it was forked (or
# vforked) from, here this test process, which may have grown to gigabytes in earlier tests.
_REPORT_PEAK = (
    "import atexit, sys\n"
    "def report():\n"
    "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "    sys.stderr.write(f'\\nVmHWM {hwm[0] if hwm else -1}\\n')\n"
    "atexit.register(report)\n"
    "from dlman.cli import main\n"
    "main(sys.argv[1:])\n"
)


def dlman_peak(args: list[str], cwd: Path) -> tuple[int, bytes, float]:
    """Exit status, standard output and peak RSS (MB) of one ``dlman`` process."""
    with open(cwd / "stdout", "wb") as out, open(cwd / "stderr", "wb") as err:
        status = subprocess.run([sys.executable, "-c", _REPORT_PEAK, *args], cwd=cwd, stdout=out,
                                stderr=err).returncode
    lines = (cwd / "stderr").read_text().splitlines()
    peak_kib = int(lines[-1].split()[1])
    if peak_kib < 0:
        pytest.skip("no /proc/self/status VmHWM on this system")
    return status, (cwd / "stdout").read_bytes(), peak_kib / 1024
