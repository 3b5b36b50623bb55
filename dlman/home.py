"""Where the queue lives: ``--home``, else ``DLMAN_HOME``, else the XDG data directory.

The database may hold request headers (credentials), so the directory is created
owner-only and the database file readable by its owner only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DB_NAME = "queue.db"


def resolve_home(home: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The home directory as an absolute path, without touching the disk."""
    env = os.environ if environ is None else environ
    if home:
        chosen = Path(home)
    elif env.get("DLMAN_HOME"):
        chosen = Path(env["DLMAN_HOME"])
    elif env.get("XDG_DATA_HOME"):
        chosen = Path(env["XDG_DATA_HOME"]) / "dlman"
    else:
        base = Path(env["HOME"]) if env.get("HOME") else Path.home()
        chosen = base / ".local" / "share" / "dlman"
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def prepare_home(home: Path) -> Path:
    """Create the home (0700) and an empty database file (0600) if missing; return the db path.

    The file is created before SQLite opens it so it is never, even briefly,
    readable by others; SQLite gives its -wal and -shm files the same mode.
    """
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = home / DB_NAME
    fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    return db
