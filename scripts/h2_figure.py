"""HTTP/2 against HTTP/1.1: wall time of one segmented download over each, same server, same TLS.

Serves a file from the tests' h2 server (HTTPS on 127.0.0.1, in a process of its own; ALPN
picks h2 or http/1.1, whichever the client offers) and downloads it with ``dlman.download(..., http2=True)`` and
``http2=False`` in turn, interleaved, trusting the server's CA through SSL_CERT_FILE. Prints
min / median / max of each and the ratio of the medians. Run from the repository root:

    python scripts/h2_figure.py --size-mib 64 --connections 8 --runs 5

``--sequential`` makes the server send concurrent h2 responses one at a time (RFC 9218's
default order); ``--no-cancel`` uses httpcore's own HTTP/2 connection, which does not reset
the streams it stops reading (to show what that costs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dlman  # noqa: E402
import dlman.transport  # noqa: E402
from machine import cpu_model  # noqa: E402
from faultserver import make_data  # noqa: E402
from h2server import H2Server  # noqa: E402

MiB = 1 << 20
PROTOCOLS = {"h2": True, "http/1.1": False}


def serve(pipe: Connection, size: int, sequential: bool) -> None:
    """The server process: serves the file until told to stop; reports what it saw."""
    with H2Server() as server:
        server.sequential = sequential
        resource = server.add("/file.bin", make_data(size))
        pipe.send((server.url("/file.bin"), server.ca.cert_pem.bytes()))
        while pipe.recv() == "seen":
            pipe.send(sorted({r.protocol for r in resource.requests}))
            resource.requests.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="the engine's timeout")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--no-cancel", action="store_true")
    args = parser.parse_args()
    if args.no_cancel:
        dlman.transport.cancelling_http2_available = lambda: False  # type: ignore[assignment]
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            del os.environ[name]  # a proxy would take dlman off its own transport
    size = args.size_mib * MiB
    data = make_data(size)
    times: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.size_mib} MiB, "
          f"{args.connections} connections, {args.runs} runs each, interleaved"
          f"{', sequential h2 server' if args.sequential else ''}"
          f"{', without stream cancelling' if args.no_cancel else ''}")
    # The server runs in a process of its own, as a real one would: its h2 framing then
    # costs the other core, not the client's interpreter.
    context = multiprocessing.get_context("spawn")
    pipe, child_pipe = context.Pipe()
    process = context.Process(target=serve, args=(child_pipe, size, args.sequential), daemon=True)
    process.start()
    try:
        url, ca_pem = pipe.recv()
        with tempfile.TemporaryDirectory() as tmp:
            ca_file = Path(tmp) / "ca.pem"
            ca_file.write_bytes(ca_pem)
            os.environ["SSL_CERT_FILE"] = str(ca_file)
            for run in range(args.runs):
                order = list(PROTOCOLS) if run % 2 == 0 else list(reversed(PROTOCOLS))
                for name in order:
                    dest = Path(tmp) / "file.bin"
                    dest.unlink(missing_ok=True)
                    started = time.monotonic()
                    dlman.download(url, dest, connections=args.connections,
                                   http2=PROTOCOLS[name], timeout=args.timeout)
                    took = time.monotonic() - started
                    if dest.read_bytes() != data:
                        raise SystemExit(f"{name}: the downloaded file differs")
                    pipe.send("seen")
                    seen = pipe.recv()
                    if seen != [name]:
                        raise SystemExit(f"{name}: the server saw {seen}")
                    times[name].append(took)
                    print(f"run {run + 1} {name:8} {took:6.2f} s")
    finally:
        pipe.send("stop")
        process.join(10)
    print("\n| protocol | min s | median s | max s |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")
    ratio = statistics.median(times["h2"]) / statistics.median(times["http/1.1"])
    print(f"\nh2 / http/1.1 (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
