"""How the queue scales with its length: adding, listing and claiming among many jobs.

Every figure but the last comes from a fresh ``dlman`` process (wall time and peak RSS of that
process), so start-up and imports are included. No network: the URLs are never fetched.
Run from the repository root:

    python scripts/queue_scale.py --jobs 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dlman


def measure(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one dlman process; its output is discarded."""
    began = time.monotonic()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "dlman", *argv], cwd=cwd, stdout=sink,
                                   stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    took = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = root / "m.txt"
        manifest.write_text("".join(f"http://127.0.0.1:9/f{i}\n" for i in range(args.jobs)))
        home = ["--home", str(root / "home")]
        print(f"| step ({args.jobs} jobs) | wall s | peak RSS MB |\n|---|--:|--:|")
        for label, argv in [("add --later -i (new)", [*home, "add", "--later", "-d", "out", "-i", str(manifest)]),
                            ("add --later -i (again)", [*home, "add", "--later", "-d", "out", "-i", str(manifest)]),
                            ("list --json", [*home, "list", "--json"]),
                            ("list", [*home, "list"])]:
            took, rss = measure(argv, root)
            print(f"| {label} | {took:.2f} | {rss:.0f} |")
        print(f"\nclaim + settle with {args.jobs} queued: {claim_seconds(root / 'home', args.claims) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
