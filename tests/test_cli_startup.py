"""Start-up stays cheap: ``dlman --version``, ``--help`` and shell completion load neither httpx, asyncio,
tqdm nor the queue; a command loads what it needs when it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("httpx", "httpcore", "h2", "asyncio", "tqdm", "sqlite3", "dlman.engine", "dlman.queue", "aiofiles",
         "starlette", "uvicorn", "websockets")

PROBE = """
import json, sys
from dlman.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in {heavy} if name in sys.modules)), file=sys.stderr)
"""


def loaded(*args: str) -> list[str]:
    """The heavy modules a dlman process had imported when ``dlman ARGS`` returned."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, timeout=60)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["add", "--help"], ["list", "--help"],
                                  ["serve", "--help"]])
def test_version_and_help_import_nothing_heavy(args: list[str]) -> None:
    assert loaded(*args) == []


def test_a_command_that_downloads_imports_the_engine_when_it_runs(tmp_path) -> None:
    # The probe itself is sound: the same process after a real command has them all.
    assert {"httpx", "asyncio", "sqlite3", "dlman.engine"} <= set(
        loaded("--home", str(tmp_path / "home"), "add", "--retries", "0", "http://127.0.0.1:9/x", "-d", str(tmp_path), "-q"))
