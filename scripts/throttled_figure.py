"""Wall time of one throttled download with 1 and with N connections (the engine's scaling figure).

Serves a file from the tests' fault-injecting server on 127.0.0.1, throttled per
connection, and downloads it with ``dlman.download``. Run from the repository root:

    python scripts/throttled_figure.py --size-mib 64 --rate-mib 2 --connections 1 8
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dlman  # noqa: E402
from faultserver import FaultServer, make_data  # noqa: E402

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rate-mib", type=float, default=2.0, help="per-connection throttle")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    data = make_data(args.size_mib * MiB)
    digest = hashlib.sha256(data).hexdigest()
    print("| connections | wall s | served MiB | ideal s |\n|---|---|---|---|")
    with FaultServer() as server:
        resource = server.add("/file.bin", data, throttle=int(args.rate_mib * MiB), auto_etag=True)
        for count in args.connections:
            resource.reset_counters()
            with tempfile.TemporaryDirectory() as out:
                started = time.monotonic()
                result = dlman.download(server.url("/file.bin"), out, connections=count,
                                        checksum=f"sha256:{digest}")
                took = time.monotonic() - started
                assert result.size == len(data)
            ideal = args.size_mib / (args.rate_mib * count)
            print(f"| {count} | {took:.2f} | {resource.bytes_served / MiB:.1f} | {ideal:.2f} |")


if __name__ == "__main__":
    main()
