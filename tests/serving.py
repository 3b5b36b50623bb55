"""A real ``dlman serve`` process for the server tests, and small clients for it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from helpers import wait_for

SECRET = "correct horse battery staple"
_SERVING = re.compile(r"serving on (http://\S+) ")


class Daemon:
    """``python -m dlman.server`` started in ``cwd`` with its own home; stderr goes to a file."""

    def __init__(self, tmp: Path, *args: str, secret: str | None = SECRET, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.root = tmp / "downloads"
        self.root.mkdir(exist_ok=True)
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        self.secret = secret
        environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        environ.update(NO_PROXY="*", PYTHONUNBUFFERED="1", DLMAN_HOME=str(self.home))
        if secret is not None:
            environ["DLMAN_RPC_SECRET"] = secret
        environ.update(env or {})
        self.env = environ
        command = [sys.executable, "-m", "dlman.server", "--listen", "127.0.0.1:0", "--download-root",
                   str(self.root), *args]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=tmp, env=environ, stdout=log, stderr=subprocess.STDOUT)
        self.url = wait_for(self._announced, timeout=20, what="the daemon to listen")
        self.client = httpx.Client(base_url=self.url, timeout=20, trust_env=False)
        self._ids = 0

    def _announced(self) -> str | None:
        match = _SERVING.search(self.output())
        if match is None and self.process.poll() is not None:
            raise AssertionError(f"dlman serve exited {self.process.returncode}:\n{self.output()}")
        return match.group(1) if match else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/jsonrpc"

    def request(self, method: str, *params: Any, token: str | None = "default") -> dict[str, Any]:
        """One JSON-RPC request body (with the daemon's token unless told otherwise)."""
        self._ids += 1
        if token == "default":
            token = self.secret
        full = ([f"token:{token}"] if token is not None else []) + list(params)
        return {"jsonrpc": "2.0", "id": f"q{self._ids}", "method": method, "params": full}

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post("/jsonrpc", json=body, **kwargs)

    def call(self, method: str, *params: Any, token: str | None = "default") -> Any:
        """The result of a call, or AssertionError with the error."""
        answer = self.post(self.request(method, *params, token=token)).json()
        if "error" in answer:
            raise RpcError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if self.secret is not None:
            headers.setdefault("Authorization", f"Bearer {self.secret}")
        return self.client.request(method, path, headers=headers, **kwargs)

    def status(self, gid: str) -> dict[str, Any]:
        return self.call("aria2.tellStatus", gid)

    def wait_status(self, gid: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: (lambda s: s if s["status"] in statuses else None)(self.status(gid)),
                        timeout=timeout, what=f"{gid} to be {'/'.join(statuses)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.client.close()
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


class RpcError(AssertionError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@contextmanager
def running(tmp: Path, *args: str, **kwargs: Any) -> Iterator[Daemon]:
    daemon = Daemon(tmp, *args, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()


def notifications(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(method, gid) of each notification among WebSocket messages."""
    return [(m["method"], m["params"][0]["gid"]) for m in messages if "method" in m]


def read_json(connection: Any, timeout: float) -> dict[str, Any] | None:
    """The next WebSocket message as JSON, or None after ``timeout`` seconds."""
    try:
        return json.loads(connection.recv(timeout=timeout))
    except TimeoutError:
        return None
