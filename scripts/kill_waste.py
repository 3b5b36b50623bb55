#!/usr/bin/env python3
"""How much a kill -9 wastes: bytes served again after a SIGKILL at 40% of a throttled download.

A child process downloads from the tests' fault server (on 127.0.0.1), throttled per
connection; once the server has sent 40% of the file the child gets SIGKILL, and a second
process resumes (one connection, unthrottled, so that the resume itself fetches exactly what
the state says is missing). The waste is what the server sent beyond the file's size: what had
arrived but was not yet claimed by a saved state. SPEC rule 5 bounds it by about one save
interval at the aggregate rate plus what sits in socket and transport buffers.

    python scripts/kill_waste.py                      # both scenarios, 5 runs each
    python scripts/kill_waste.py --runs 3 --scenario 512k:4
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu_model  # noqa: E402
from faultserver import FaultServer, make_data  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
SCRIPT = "import sys, dlman; dlman.download(sys.argv[1], sys.argv[2], connections=int(sys.argv[3]), timeout=10)"
SCENARIOS = {"128k:1": (128 * KiB, 1, 2 * MiB), "512k:4": (512 * KiB, 4, 8 * MiB)}


def one_run(server: FaultServer, rate: int, connections: int, size: int, seed: int) -> int:
    """The waste in bytes of one kill at 40% and a resume."""
    data = make_data(size, seed=seed)
    res = server.add(f"/k{seed}.bin", data, throttle=rate, auto_etag=True)
    with tempfile.TemporaryDirectory(prefix="dlman-kill-") as temp:
        dest = Path(temp) / "f.bin"
        child = subprocess.Popen([sys.executable, "-c", SCRIPT, server.url(res.path), str(dest), str(connections)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=temp)
        deadline = time.monotonic() + 120
        while res.bytes_served < 0.4 * size:
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the download ended or stalled before 40%: {child.stderr.read().decode()}")
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        while res.active:  # the server has seen the connections die (else it would count
            time.sleep(0.005)  # bytes sent unthrottled into a dead socket)
        res.throttle = None
        resume = subprocess.run([sys.executable, "-c", SCRIPT, server.url(res.path), str(dest), "1"],
                                capture_output=True, text=True, timeout=120, cwd=temp)
        if resume.returncode != 0 or dest.read_bytes() != data:
            raise SystemExit(f"the resume failed or the file differs: {resume.stderr}")
    return res.bytes_served - size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="rate:connections (default: all)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print("| rate x connections | file | waste min / median / max | one second at the aggregate rate |")
    print("|---|---|---|---|")
    with FaultServer() as server:
        for name in args.scenario or sorted(SCENARIOS):
            rate, connections, size = SCENARIOS[name]
            wastes = [one_run(server, rate, connections, size, seed) for seed in range(args.runs)]
            low, mid, high = min(wastes), statistics.median(wastes), max(wastes)
            print(f"| {rate // KiB} KiB/s x {connections} | {size // MiB} MiB | "
                  f"{low / KiB:.0f} / {mid / KiB:.0f} / {high / KiB:.0f} KiB "
                  f"({mid / size:.1%} of the file) | {rate * connections // KiB} KiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
