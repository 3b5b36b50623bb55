"""What ``dlman serve`` was asked for, and the rules about exposing it.

aria2's history is the reason for these rules: an RPC port reachable by others, without a
secret, let anyone write files anywhere the daemon could (``dir``/``out`` into
``~/.ssh``). So the daemon listens on loopback unless told otherwise, and refuses to listen
anywhere else, or to let every web origin in, without a secret.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dlman.errors import InvalidInputError
from dlman.options import check_path_text

DEFAULT_PORT = 6800
DEFAULT_MAX_REQUEST = 2 * 1024 * 1024  # aria2's --rpc-max-request-size default
MAX_BATCH = 1000  # calls in one batch or one system.multicall
SECRET_ENV = "DLMAN_RPC_SECRET"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


@dataclass(frozen=True)
class ServeConfig:
    """Everything the daemon needs to know, checked (see ``check``)."""

    listen: Listen = Listen("127.0.0.1", DEFAULT_PORT)
    secret: str | None = None
    origins: tuple[str, ...] = ()
    roots: tuple[str, ...] = ()
    jobs: int = 4
    limit_rate: int | None = None
    allow_overwrite: bool = False
    max_request: int = DEFAULT_MAX_REQUEST
    max_batch: int = MAX_BATCH
    extra: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # A config may end up in a log or a traceback: never with its secret.
        secret = "set" if self.secret else None
        return (f"ServeConfig(listen={self.listen!r}, secret={secret}, origins={self.origins!r}, "
                f"roots={self.roots!r}, jobs={self.jobs}, allow_overwrite={self.allow_overwrite})")


def parse_listen(text: str) -> Listen:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``PORT`` (the rest from 127.0.0.1:6800)."""
    text = text.strip()
    if not text:
        raise InvalidInputError("--listen is empty")
    host, port = "127.0.0.1", str(DEFAULT_PORT)
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidInputError(f"invalid --listen {text!r}: expected [IPv6]:PORT")
        host, port = inner, rest[1:] or port
    elif text.isdigit():
        port = text
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        host = text  # a bare IPv6 address
    else:
        host = text
    if not host:
        raise InvalidInputError(f"invalid --listen {text!r}: no host")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidInputError(f"invalid --listen {text!r}: the port must be 0 to 65535")
    return Listen(host, int(port))


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(listen: Listen, secret: str | None, origins: Sequence[str]) -> None:
    """Refuse what would let others drive the daemon without the secret."""
    if secret is not None and not secret:
        raise InvalidInputError("the RPC secret is empty")
    if not listen.loopback and not secret:
        raise InvalidInputError(
            f"refusing to listen on {listen.host} without a secret: anyone who reaches it could write files; "
            f"set {SECRET_ENV} (or --rpc-secret-file) or listen on 127.0.0.1")
    if "*" in origins and not secret:
        raise InvalidInputError("--allow-origin '*' needs a secret: every web page could drive the daemon")


def read_secret(option: str | None, file: str | None, environ: Mapping[str, str]) -> str | None:
    """The secret from ``--rpc-secret``, ``--rpc-secret-file`` (first line) or the environment."""
    given = [name for name, value in (("--rpc-secret", option), ("--rpc-secret-file", file)) if value is not None]
    if len(given) > 1:
        raise InvalidInputError("give the secret once: --rpc-secret or --rpc-secret-file")
    if option is not None:
        return option
    if file is not None:
        try:
            with open(file, encoding="utf-8") as handle:
                line = handle.readline()
        except OSError as error:
            raise InvalidInputError(f"cannot read the secret file {file}: {error.strerror or error}") from None
        secret = line.rstrip("\r\n")
        if not secret:
            raise InvalidInputError(f"the secret file {file} has an empty first line")
        return secret
    value = environ.get(SECRET_ENV)
    return value if value else None


def check_origin(origin: str) -> str:
    """An ``--allow-origin``: ``*`` or ``scheme://host[:port]`` with nothing after it."""
    origin = origin.strip().rstrip("/")
    if origin == "*":
        return origin
    scheme, sep, rest = origin.partition("://")
    if not sep or not scheme or not rest or "/" in rest or "?" in rest or "#" in rest:
        raise InvalidInputError(f"invalid --allow-origin {origin!r}: expected scheme://host[:port] or '*'")
    return f"{scheme.lower()}://{rest.lower()}"


def check_roots(roots: Sequence[str], cwd: str) -> tuple[str, ...]:
    """The download roots as real absolute paths (default: the directory the daemon runs in)."""
    chosen = list(roots) or [cwd]
    resolved = []
    for root in chosen:
        check_path_text(root, "--download-root")
        path = check_path_text(os.path.realpath(os.path.join(cwd, os.path.expanduser(root))), "--download-root")
        if not os.path.isdir(path):
            raise InvalidInputError(f"--download-root {root} is not a directory")
        resolved.append(path)
    return tuple(dict.fromkeys(resolved))
