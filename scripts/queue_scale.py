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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dlman

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import dlman_peak  # noqa: E402  (the child's own peak memory, as the tests take it)
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
    """Wall time and peak RSS (MB, the child's own VmHWM) of one dlman process."""
    began = time.monotonic()
    status, _, peak = dlman_peak(argv, cwd)
    took = time.monotonic() - began
    if status != expect:
        errors = (cwd / "stderr").read_text(errors="replace")
        raise SystemExit(f"dlman {' '.join(argv)} exited {status}: {errors[-2000:]}")
    return took, peak


def first_line_seconds(argv: list[str], cwd: Path) -> float:
    """Seconds until one dlman process has written its first line of output."""
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "dlman", *argv], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()
    took = time.monotonic() - began
    process.kill()
    process.wait()
    return took


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
        print(f"\nlist, time to its first line: {first_line_seconds([*home, 'list'], root):.2f} s")
        print(f"claim + settle with {args.jobs} queued: {claim_seconds(root / 'home', args.claims) * 1000:.2f} ms")
        for count in args.runs:
            print(f"run over {count} ids, -j 4, instant engine: {run_ms_per_job(root, count):.2f} ms per job")


if __name__ == "__main__":
    main()
