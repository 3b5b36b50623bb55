"""How the queue scales with its length: adding, listing, claiming and running many jobs.

The table's figures come from fresh ``dlman`` processes (wall time and peak RSS of each), so
start-up and imports are included. The runner's cost per job is measured in this process with
an engine that finishes every download at once, for runs over lists of ids of growing length.
No network: the URLs are never fetched. Run from the repository root:

    python scripts/queue_scale.py --jobs 1000000 --runs 1000 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dlman
from dlman.queue import prepare
from dlman.result import DownloadResult


class InstantEngine:
    """Finishes every download at once, writing nothing: what is left is the runner's cost."""

    def __init__(self, **options: object) -> None:
        pass

    async def __aenter__(self) -> "InstantEngine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def download(self, urls: list[str], dest: str, **options: object) -> DownloadResult:
        await asyncio.sleep(0)
        return DownloadResult(path=Path(dest), size=1, url=urls[0])


def measure(argv: list[str], cwd: Path, expect: int = 0) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one dlman process; its output is discarded."""
    began = time.monotonic()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "dlman", *argv], cwd=cwd, stdout=sink,
                                   stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    took = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != expect:
        raise SystemExit(f"dlman {' '.join(argv)} exited {process.returncode}: {errors[-2000:]}")
    return took, usage.ru_maxrss / 1024


def claim_seconds(home: Path, claims: int) -> float:
    """Mean seconds per claim (and its release) with the queue as it is."""
    with dlman.Queue(home) as queue:
        began = time.monotonic()
        for _ in range(claims):
            job = queue.claim("scale")
            if job is None:
                break
            queue.settle("scale", job.id, "done")
        return (time.monotonic() - began) / claims


def run_ms_per_job(root: Path, count: int) -> float:
    """Mean milliseconds per job of ``Queue.run`` over ``count`` ids (what ``dlman add -i`` does)."""
    with dlman.Queue(root / f"run{count}") as queue:
        ids = [job.id for job in queue.add_many([prepare(f"http://127.0.0.1:9/f{i}", str(root / "out" / f"f{i}"))
                                                 for i in range(count)])]
        began = time.monotonic()
        outcomes = queue.run(4, ids=ids, engine_factory=InstantEngine)
        assert len(outcomes) == count
        return (time.monotonic() - began) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--runs", type=int, nargs="*", default=[1000, 20000], help="lengths of the runs timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = root / "m.txt"
        with open(manifest, "w") as out:
            out.writelines(f"http://127.0.0.1:9/f{i}\n  out=f{i}\n" for i in range(args.jobs))
        bad = root / "bad.txt"
        shutil.copyfile(manifest, bad)
        with open(bad, "a") as out:
            out.write("ftp://127.0.0.1:9/last\n")
        home = ["--home", str(root / "home")]
        print(f"| step ({args.jobs} jobs) | wall s | peak RSS MB |\n|---|--:|--:|")
        took, rss = measure([*home, "add", "--later", "-d", "out", "-i", str(bad)], root, expect=2)
        print(f"| add --later -i (last line bad: exit 2, nothing added) | {took:.2f} | {rss:.0f} |")
        for label, argv in [("add --later -i (new)", [*home, "add", "--later", "-d", "out", "-i", str(manifest)]),
                            ("add --later -i (again)", [*home, "add", "--later", "-d", "out", "-i", str(manifest)]),
                            ("list --json", [*home, "list", "--json"]),
                            ("list", [*home, "list"])]:
            took, rss = measure(argv, root)
            print(f"| {label} | {took:.2f} | {rss:.0f} |")
        print(f"\nclaim + settle with {args.jobs} queued: {claim_seconds(root / 'home', args.claims) * 1000:.2f} ms")
        for count in args.runs:
            print(f"run over {count} ids, -j 4, instant engine: {run_ms_per_job(root, count):.2f} ms per job")


if __name__ == "__main__":
    main()
