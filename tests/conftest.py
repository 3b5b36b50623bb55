"""Shared fixtures: local fault-injecting servers and deterministic test data.

Kept small on purpose; test modules add their own fixtures next to their tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import trustme

# Test modules import the server as ``from faultserver import FaultServer``; make that work
# under any pytest import mode, not only the default "prepend".
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultserver import FaultServer, make_data as _make_data  # noqa: E402
from sabotages import apply_from_environment  # noqa: E402

apply_from_environment()  # scripts/sabotage.py: one mechanism switched off, to see its tests fail

# When pytest believes it runs on CI (CI or BUILD_NUMBER set) it explains a failed comparison of
# two sequences with a full difflib diff of their reprs, whatever the verbosity: minutes for two
# multi-MiB files, so a failing test becomes a timeout (and pytest-timeout's interruption of that
# diff can crash pytest's own report). Byte strings are explained cheaply by the hook below.
for _variable in ("CI", "BUILD_NUMBER"):
    os.environ.pop(_variable, None)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Explain a failed comparison of large byte strings by where they part, cheaply (pytest's
    short form names no offset; its full diff of multi-MiB reprs takes minutes, see above)."""
    if op != "==" or not isinstance(left, (bytes, bytearray)) or not isinstance(right, (bytes, bytearray)):
        return None
    if max(len(left), len(right)) <= 4096:
        return None
    first = next((i for i in range(0, min(len(left), len(right)), 4096)
                  if left[i:i + 4096] != right[i:i + 4096]), min(len(left), len(right)))
    while first < min(len(left), len(right)) and left[first] == right[first]:
        first += 1
    return [f"{len(left)} bytes == {len(right)} bytes",
            f"first difference at offset {first}"]


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
def ca() -> "trustme.CA":
    """A test certificate authority; its certificates are for servers on 127.0.0.1."""
    import trustme

    return trustme.CA()


@pytest.fixture
def tls_server(ca: "trustme.CA") -> Iterator[FaultServer]:
    """HTTPS on 127.0.0.1 with a certificate valid for 127.0.0.1 and localhost, from ``ca``."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with FaultServer(ssl_context=context) as srv:
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
