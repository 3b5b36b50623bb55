"""Running the daemon: the socket, the service, uvicorn, and a clean stop on a signal.

SIGINT and SIGTERM stop it as they stop ``dlman run``: the downloads stop with their state
saved, their jobs go back to ``queued``, and the exit status is 130 or 143. aria2's
``shutdown`` stops it the same way, with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from dlman.server.app import build
from dlman.server.config import ServeConfig
from dlman.server.service import Service

log = logging.getLogger("dlman.server")

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
GRACE = 3  # seconds open connections (event streams, WebSockets) get to finish on a stop


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon's stop saves the queue first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(config: ServeConfig) -> socket.socket:
    """The listening socket (OSError if the address is taken or unknown)."""
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    infos = socket.getaddrinfo(config.listen.host, config.listen.port, family if ":" in config.listen.host else 0,
                               socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


async def _main(config: ServeConfig, home: str | None, sock: socket.socket, announce: str) -> int:
    service = Service(config, home)
    stopped_by: list[int] = []
    server: _Server | None = None
    runner: asyncio.Task[None] | None = None

    def stop() -> None:
        """Stop the downloads at once (their state is saved) and the server after them."""
        service.stopping.set()
        if runner is not None:
            runner.cancel()
        if server is not None:
            server.should_exit = True

    def on_signal(signum: int) -> None:
        if stopped_by:
            print("dlman: still stopping, saving state; please wait", file=sys.stderr, flush=True)
            return
        stopped_by.append(signum)
        stop()

    app = build(config, service, stop)
    uconfig = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", proxy_headers=False,
                             server_header=False, ws_max_size=config.max_request, ws_per_message_deflate=False,
                             timeout_graceful_shutdown=GRACE, ws="auto")
    server = _Server(uconfig)
    loop = asyncio.get_running_loop()
    for signum in EXIT_SIGNAL:
        loop.add_signal_handler(signum, on_signal, signum)
    runner = asyncio.create_task(service.run(), name="dlman-serve-queue")
    try:
        print(announce, file=sys.stderr, flush=True)
        await server.serve(sockets=[sock])
    finally:
        service.stopping.set()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        service.close()
        for signum in EXIT_SIGNAL:
            loop.remove_signal_handler(signum)
    if stopped_by:
        print("dlman: stopped; partial data kept and interrupted jobs queued again", file=sys.stderr, flush=True)
        return EXIT_SIGNAL[signal.Signals(stopped_by[0])]
    return 0


def run(config: ServeConfig, home: str | None) -> int:
    """Serve until stopped; the exit status."""
    sock = bind(config)
    port = sock.getsockname()[1]
    announce = (f"dlman: serving on {config.listen.url(port)} (aria2 JSON-RPC at /jsonrpc, web page at /, "
                f"downloads into {', '.join(config.roots)})")
    try:
        return asyncio.run(_main(config, home, sock, announce))
    finally:
        sock.close()
