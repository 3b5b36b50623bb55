"""Shared fixtures: local fault-injecting servers and deterministic test data.

Kept small on purpose; test modules add their own fixtures next to their tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Test modules import the server as ``from faultserver import FaultServer``; make that work
# under any pytest import mode, not only the default "prepend".
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultserver import FaultServer, make_data as _make_data  # noqa: E402
from sabotages import apply_from_environment  # noqa: E402

apply_from_environment()  # scripts/sabotage.py: one mechanism switched off, to see its tests fail


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A started FaultServer on 127.0.0.1, stopped (all connections closed) after the test."""
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def server2() -> Iterator[FaultServer]:
    """A second, independent origin: a different port, for cross-origin redirects and mirrors."""
    with FaultServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def make_data() -> Callable[..., bytes]:
    """``make_data(size, seed=0)``: deterministic random bytes, the same for the same seed."""
    return _make_data


@pytest.fixture(autouse=True)
def _fresh_loggers() -> Iterator[None]:
    """The command line routes the "dlman" logger to stderr; an in-process CLI test must not leave
    that route to the tests after it (the engine itself prints nothing)."""
    import logging

    names = ("dlman", "httpx", "httpcore")
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level) for name in names}
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
