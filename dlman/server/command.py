"""The ``serve`` click command. It imports none of the web stack until it runs, so ``dlman --help``
stays fast and a plain install (without the ``server`` extra) still works."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

import click

from dlman.errors import InvalidInputError
from dlman.options import parse_rate
from dlman.server.config import (
    DEFAULT_MAX_REQUEST,
    SECRET_ENV,
    ServeConfig,
    check_exposure,
    check_origin,
    check_roots,
    parse_listen,
    read_secret,
)

EXTRA = ("starlette", "uvicorn", "websockets")
EXIT_FAILED, EXIT_USAGE = 1, 2


def missing_extra() -> list[str]:
    return [name for name in EXTRA if importlib.util.find_spec(name) is None]


def _inherited(ctx: click.Context, name: str) -> Any:
    """A global option of the ``dlman`` group (``--home``, ``-v``, ``-q``), when there is one."""
    parent = ctx.parent
    while parent is not None:
        if name in parent.params:
            return parent.params[name]
        parent = parent.parent
    return None


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dlman: %(message)s"))
    for name in ("dlman", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen", default="127.0.0.1:6800", show_default=True, metavar="HOST:PORT",
              help="Where to listen. Anything but loopback needs a secret.")
@click.option("--rpc-secret", "secret", metavar="SECRET",
              help=f"aria2's token (visible in ps: prefer {SECRET_ENV} or --rpc-secret-file).")
@click.option("--rpc-secret-file", "secret_file", metavar="FILE", help="Read the secret from the first line of FILE.")
@click.option("--allow-origin", "origins", multiple=True, metavar="ORIGIN",
              help="A web origin (scheme://host[:port]) whose pages may call the daemon; '*' for all (needs a "
                   "secret). Repeatable.")
@click.option("--download-root", "roots", multiple=True, metavar="DIR",
              help="A directory that downloads from the network may be written in (repeatable; default: the "
                   "current directory). The first is where 'dir' is relative to.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Downloads at once.")
@click.option("--limit-rate", metavar="RATE", help="Bytes per second for all downloads; K, M, G suffixes count 1024.")
@click.option("--allow-overwrite", is_flag=True, help="Let network clients replace existing files.")
@click.option("--max-request-size", type=click.IntRange(min=1024), default=DEFAULT_MAX_REQUEST, show_default=True,
              metavar="BYTES", help="Largest request body or WebSocket message.")
@click.option("--home", metavar="DIR", help="Where the queue lives (as dlman --home).")
@click.option("-v", "--verbose", count=True, help="Log requests (never their parameters) and downloads.")
@click.pass_context
def serve(ctx: click.Context, listen: str, secret: str | None, secret_file: str | None, origins: tuple[str, ...],
          roots: tuple[str, ...], jobs: int, limit_rate: str | None, allow_overwrite: bool, max_request_size: int,
          home: str | None, verbose: int) -> None:
    """Run the queue for ever and serve aria2's JSON-RPC (at /jsonrpc), a REST API (/api/) and a web page (/).

    aria2 clients (AriaNg, browser extensions, aria2p) connect as to aria2c --enable-rpc.
    SIGINT or SIGTERM stop it with every download's state saved.
    """
    missing = missing_extra()
    if missing:
        raise click.ClickException(f"dlman serve needs the server extra ({', '.join(missing)} missing): "
                                   "pip install 'dlman[server]'")
    home = home or _inherited(ctx, "home")
    verbose = verbose or _inherited(ctx, "verbose") or 0
    quiet = bool(_inherited(ctx, "quiet"))
    try:
        config = _config(listen, secret, secret_file, origins, roots, jobs, limit_rate, allow_overwrite,
                         max_request_size)
    except InvalidInputError as error:
        raise click.UsageError(str(error)) from None
    if secret is not None:
        click.echo(f"dlman: warning: --rpc-secret is visible to other users in ps; prefer {SECRET_ENV} or "
                   "--rpc-secret-file", err=True)
    _setup_logging(verbose, quiet)
    from dlman.server.daemon import run  # the web stack, only now

    try:
        status = run(config, home)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {config.listen.host}:{config.listen.port}: "
                                   f"{error.strerror or error}") from None
    ctx.exit(status)


def _config(listen: str, secret: str | None, secret_file: str | None, origins: tuple[str, ...],
            roots: tuple[str, ...], jobs: int, limit_rate: str | None, allow_overwrite: bool,
            max_request: int) -> ServeConfig:
    """The checked configuration (InvalidInputError naming what is wrong)."""
    address = parse_listen(listen)
    token = read_secret(secret, secret_file, os.environ)
    os.environ.pop(SECRET_ENV, None)  # not handed down to anything the daemon may start
    allowed = tuple(check_origin(origin) for origin in origins)
    check_exposure(address, token, allowed)
    return ServeConfig(listen=address, secret=token, origins=allowed, roots=check_roots(roots, os.getcwd()),
                       jobs=jobs, limit_rate=parse_rate(limit_rate) if limit_rate else None,
                       allow_overwrite=allow_overwrite, max_request=max_request)


def main() -> None:
    """``python -m dlman.server``: the command on its own, outside the ``dlman`` group."""
    serve.main(prog_name="dlman serve")
