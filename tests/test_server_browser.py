"""The web page in a real headless Chromium (Debian's), driven over its DevTools protocol."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the server extra is not installed: pip install 'dlman[server]'")
from websockets.sync.client import connect  # noqa: E402

from helpers import wait_for  # noqa: E402
from serving import SECRET, running  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,700", "--remote-debugging-port=0", "about:blank")
SIZE = 1536 * 1024

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Page:
    """One tab, driven by DevTools commands over its WebSocket."""

    def __init__(self, url: str) -> None:
        self.connection = connect(url, open_timeout=20, max_size=None).__enter__()
        self._ids = itertools.count(1)

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self.connection.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.connection.recv(timeout=30))
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.command("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 20) -> Any:
        """Poll ``expression`` until truthy (an error, as while the page loads, counts as not yet)."""
        def value() -> Any:
            try:
                return self.js(expression)
            except AssertionError:
                return None
        return wait_for(value, timeout=timeout, interval=0.1, what=what)


@pytest.fixture
def page() -> Iterator[Page]:
    profile = tempfile.mkdtemp(prefix="dlman-chromium-")
    browser = subprocess.Popen([CHROMIUM, f"--user-data-dir={profile}", *FLAGS], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        active = Path(profile) / "DevToolsActivePort"
        port = wait_for(lambda: active.exists() and active.read_text().split("\n")[0], timeout=30,
                        what="chromium's DevTools port")
        import httpx
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", trust_env=False).json()
        tab = next(t for t in targets if t["type"] == "page")
        opened = Page(tab["webSocketDebuggerUrl"])
        yield opened
        opened.connection.close()
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def row(job_id: int) -> str:
    return f'document.querySelector(\'tr[data-id="{job_id}"]\')'


def test_the_page_shows_live_progress_adds_pauses_and_resumes(page: Page, tmp_path: Path, server,
                                                              make_data) -> None:
    first, second = make_data(2 * SIZE, seed=80), make_data(SIZE, seed=81)
    server.add("/ubuntu-24.04-desktop-amd64.iso", first, throttle=64 * 1024)  # per connection
    server.add("/debian-12-netinst.iso", second, throttle=48 * 1024)
    with running(tmp_path) as daemon:
        gid = daemon.call("aria2.addUri", [server.url("/ubuntu-24.04-desktop-amd64.iso")])
        page.command("Page.enable")
        page.command("Page.navigate", url=daemon.url + "/")
        page.wait("!document.getElementById('login').hidden", "the page to ask for the secret")
        page.js(f"document.getElementById('secret').value = {json.dumps(SECRET)};"
                "document.querySelector('#login button').click()")
        page.wait("document.body.dataset.live === 'yes'", "the live event stream")
        job = int(gid, 16)
        fraction = f"Number({row(job)}?.querySelector('[data-cell=bar]').dataset.fraction || 0)"
        before = page.wait(f"{fraction} > 0 && {fraction}", "the running job's progress")
        page.wait(f"{fraction} > {before}", "the progress bar to move")
        assert "/s" in page.js(f"{row(job)}.querySelector('[data-cell=speed]').textContent")

        page.js(f"document.getElementById('urls').value = {json.dumps(server.url('/debian-12-netinst.iso'))};"
                "document.querySelector('#add button').click()")
        page.wait("document.getElementById('message').textContent === 'added 1 job'", "the add to be confirmed")
        added = page.wait("Array.from(document.querySelectorAll('#jobs tbody tr')).map(r => Number(r.dataset.id))"
                          f".find(id => id !== {job})", "the new job's row")
        assert daemon.rest("GET", f"/api/jobs/{added}").json()["url"] == server.url("/debian-12-netinst.iso")
        page.wait(f"{row(added)}.className === 'active'", "the new job to run")
        page.wait(f"Number({row(added)}.querySelector('[data-cell=bar]').dataset.fraction) > 0.1",
                  "some progress on both jobs")
        shot = page.command("Page.captureScreenshot", format="png")
        target = Path(os.environ.get("DLMAN_SCREENSHOT", tmp_path / "page.png"))
        target.write_bytes(base64.b64decode(shot["data"]))

        page.js(f"{row(added)}.querySelector('[data-action=pause]').click()")
        page.wait(f"{row(added)}.className === 'paused'", "the row to show the pause")
        assert daemon.rest("GET", f"/api/jobs/{added}").json()["state"] == "paused"
        page.js(f"{row(added)}.querySelector('[data-action=resume]').click()")
        server.resource("/debian-12-netinst.iso").throttle = None
        server.resource("/ubuntu-24.04-desktop-amd64.iso").throttle = None
        page.wait(f"{row(added)}.className === 'done' && {row(job)}.className === 'done'", "both jobs done",
                  timeout=30)
        assert (daemon.root / "debian-12-netinst.iso").read_bytes() == second
        assert (daemon.root / "ubuntu-24.04-desktop-amd64.iso").read_bytes() == first
