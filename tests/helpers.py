"""Small helpers shared by the integration tests: polling with a deadline, reading state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
