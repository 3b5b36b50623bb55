#!/usr/bin/env python3
"""Compare httpx's default network backend with dlman.transport's asyncio one.

Why: on loopback a Python downloader is CPU-bound, so the figure that matters is CPU
seconds per byte. This serves N MiB from nginx (if on PATH) or else from a Python sender in
a subprocess, and downloads it over HTTP and HTTPS (a throw-away trustme CA), printing wall
time and the client's own CPU time (``resource.getrusage``; the server runs in another
process). Clients:

  default  httpx's own transport, ``aiter_raw()`` (no chunk_size, as dlman's slow path does)
  native   dlman.transport, ``aiter_raw()``
  fast     dlman.transport, the body read with ``BodyReader.readinto`` into one reusable
           1 MiB buffer (dlman's fast path), ``aiter_raw()`` for what is left
  curl     curl to /dev/null, for scale

Over HTTPS it also counts ``ssl.SSLObject.read`` calls per GiB (each returns at most one TLS
record, 16 KiB, however large the buffer offered).

    python scripts/profile_transport.py [--mib 256] [--repeat 3] [--server auto|nginx|python]
        [--clients default,native,fast,curl] [--http-url URL] [--https-url URL]

With --http-url/--https-url it measures against a server already running (HTTPS without
certificate checks) instead of starting one; --clients native,fast skips the slow default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from dlman.transport import body_reader, make_transport, native_backend_available  # noqa: E402

FAST_BUFFER = 1 << 20
_ssl_reads = [0]


def _count_ssl_reads() -> None:
    """Count every ssl.SSLObject.read (asyncio's TLS layer and httpx's anyio one use it)."""
    read = ssl.SSLObject.read

    def counting(self: ssl.SSLObject, *args: object, **kwargs: object) -> object:
        _ssl_reads[0] += 1
        return read(self, *args, **kwargs)  # type: ignore[arg-type]
    ssl.SSLObject.read = counting  # type: ignore[method-assign]

FILE_NAME = "blob.bin"


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def make_blob(directory: Path, mib: int) -> Path:
    path = directory / FILE_NAME
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    return path


def start_nginx(root: Path, cert: Path, key: Path, http_port: int, https_port: int) -> subprocess.Popen[bytes]:
    """nginx with sendfile, one worker, logging only errors, in a private prefix."""
    user = "user root;" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log error;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {root}/tmp_body;
    proxy_temp_path {root}/tmp_proxy;
    fastcgi_temp_path {root}/tmp_fcgi;
    uwsgi_temp_path {root}/tmp_uwsgi;
    scgi_temp_path {root}/tmp_scgi;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return proc


# ---------------------------------------------------------------- fallback Python sender
def serve_python(path: Path, cert: Path, key: Path, http_port: int, https_port: int) -> None:
    """Keep-alive GET-only server: sendfile() for HTTP, 1 MiB sendall() for HTTPS."""
    size = path.stat().st_size
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        with conn, open(path, "rb") as f:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    pending += chunk
                _, _, pending = pending.partition(b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                f.seek(0)
                if isinstance(conn, ssl.SSLSocket):
                    while block := f.read(1 << 20):
                        conn.sendall(block)
                else:
                    conn.sendfile(f)

    def accept(listener: socket.socket, tls: bool) -> None:
        while True:
            conn, _ = listener.accept()
            try:
                if tls:
                    conn = ctx.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    listeners = [
        (socket.create_server(("127.0.0.1", http_port)), False),
        (socket.create_server(("127.0.0.1", https_port)), True),
    ]
    for listener, tls in listeners:
        threading.Thread(target=accept, args=(listener, tls), daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


# ---------------------------------------------------------------- the measurement
async def download(
    url: str, client_name: str, verify: ssl.SSLContext | bool
) -> tuple[int, float, float]:
    """One streamed download; returns (bytes, wall seconds, client CPU seconds)."""
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    limits = httpx.Limits()
    if client_name in ("native", "fast"):
        transport = make_transport(verify=verify, limits=limits, trust_env=False)
    else:
        transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
    received = 0
    async with httpx.AsyncClient(
        transport=transport, headers={"Accept-Encoding": "identity"}, timeout=60
    ) as client:
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            reader = body_reader(response) if client_name == "fast" else None
            if client_name == "fast" and reader is None:
                raise SystemExit("fast: the transport offers no BodyReader for this response")
            if reader is not None:
                view = memoryview(bytearray(FAST_BUFFER))
                while count := await reader.readinto(view):
                    received += count
            async for chunk in response.aiter_raw():
                received += len(chunk)
    return received, time.perf_counter() - wall0, cpu_seconds() - cpu0


def run_curl(url: str, cafile: Path) -> tuple[float, float] | None:
    if not shutil.which("curl"):
        return None
    wall0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run(["curl", "-sS", "--cacert", str(cafile), "-o", "/dev/null", url], check=True)
    return time.perf_counter() - wall0, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0


def measure(
    urls: list[tuple[str, str]],
    verify: ssl.SSLContext | bool,
    repeat: int,
    clients: list[str],
    cafile: Path | None,
) -> None:
    """Download each URL ``repeat`` times per client and print one line per (URL, client)."""
    print(f"{'scheme':<6} {'client':<9} {'wall best':>9} {'wall med':>9} "
          f"{'cpu best':>9} {'cpu med':>9} {'MiB/s':>7} {'MiB':>6} {'SSL reads/GiB':>13}")
    for scheme, url in urls:
        mib = 0.0
        for name in clients:
            if name == "curl":
                continue
            walls, cpus, sizes = [], [], set()
            _ssl_reads[0] = 0
            for _ in range(repeat):
                size, wall, cpu = asyncio.run(download(url, name, verify))
                sizes.add(size)
                walls.append(wall)
                cpus.append(cpu)
            if len(sizes) != 1 or not size:
                raise SystemExit(f"{name} {scheme}: got sizes {sorted(sizes)}")
            mib = size / (1 << 20)
            reads = f"{_ssl_reads[0] / repeat / (mib / 1024):13.0f}" if scheme == "https" else ""
            print(f"{scheme:<6} {name:<9} {min(walls):9.3f} {statistics.median(walls):9.3f}"
                  f" {min(cpus):9.3f} {statistics.median(cpus):9.3f}"
                  f" {mib / min(walls):7.0f} {mib:6.0f} {reads}")
        curl = run_curl(url, cafile) if "curl" in clients else None
        if curl:
            print(f"{scheme:<6} {'curl':<9} {curl[0]:9.3f} {'':>9} {curl[1]:9.3f}"
                  f" {'':>9} {(mib / curl[0]) if mib else float('nan'):7.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size to download (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="downloads per configuration")
    parser.add_argument("--server", choices=["auto", "nginx", "python"], default="auto")
    parser.add_argument("--clients", default="default,native,fast,curl",
                        help="comma-separated, of: default, native, fast, curl")
    parser.add_argument("--http-url", help="use this running server instead of starting one")
    parser.add_argument("--https-url", help="likewise (certificate not verified)")
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)  # internal: be the sender
    args = parser.parse_args()

    if args.serve:
        path, cert, key, http_port, https_port = args.serve
        serve_python(Path(path), Path(cert), Path(key), int(http_port), int(https_port))
        return 0

    clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    _count_ssl_reads()
    if not native_backend_available():
        print("dlman.transport: native backend NOT available; it would fall back")
    if args.http_url or args.https_url:
        urls = [(s, u) for s, u in (("http", args.http_url), ("https", args.https_url)) if u]
        print(f"existing server, {args.repeat} runs each, aiter_raw() without chunk_size; "
              f"CPU = this process's user+sys")
        measure(urls, False, args.repeat, [c for c in clients if c != "curl"], None)
        return 0

    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers may run as another user
        make_blob(root, args.mib)
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        cert, key, cafile = root / "cert.pem", root / "key.pem", root / "ca.pem"
        server_cert.cert_chain_pems[0].write_to_path(str(cert))
        for extra in server_cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert), append=True)
        server_cert.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(cafile))
        verify = ssl.create_default_context(cafile=str(cafile))

        http_port, https_port = free_port(), free_port()
        use_nginx = args.server == "nginx" or (args.server == "auto" and shutil.which("nginx"))
        if use_nginx:
            server = start_nginx(root, cert, key, http_port, https_port)
            label = "nginx"
        else:
            server = subprocess.Popen([
                sys.executable, __file__, "--serve",
                str(root / FILE_NAME), str(cert), str(key), str(http_port), str(https_port),
            ])
            label = "python sender"
        try:
            wait_for_port(http_port)
            wait_for_port(https_port)
            print(f"{args.mib} MiB from {label} on loopback, {args.repeat} runs each, "
                  f"aiter_raw() without chunk_size; CPU = this process's user+sys")
            urls = [
                (scheme, f"{scheme}://127.0.0.1:{port}/{FILE_NAME}")
                for scheme, port in (("http", http_port), ("https", https_port))
            ]
            measure(urls, verify, args.repeat, clients, cafile)
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
