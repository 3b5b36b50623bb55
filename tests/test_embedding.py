"""Embedding dlman in an httpx program: its auth flows, its client, its timeouts, its tests.

Everything runs against the local fault server (or an HTTPS one with a throw-away CA), except
the two tests that show how an embedding program tests its own code: one with pytest-httpx, one
with ``httpx.MockTransport``, each a segmented download with real ranges.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Iterator

import httpx
import pytest

import dlman
from helpers import fetch

MiB = 1 << 20


# -- auth flows ------------------------------------------------------------------------------------
class TokenServer:
    """An OAuth2-style token endpoint and the tokens it issued, each valid for ``lifetime`` seconds."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.issued: dict[str, float] = {}

    def token_endpoint(self, request) -> tuple[int, dict[str, str], bytes]:
        token = f"t{len(self.issued) + 1}"
        self.issued[token] = time.monotonic() + self.lifetime
        body = json.dumps({"access_token": token, "expires_in": self.lifetime}).encode()
        return 200, {"Content-Type": "application/json"}, body

    def guard(self, request) -> tuple[int, dict[str, str], bytes] | None:
        match = re.fullmatch(r"Bearer (\S+)", request.headers.get("authorization", ""))
        if match and self.issued.get(match.group(1), 0) > time.monotonic():
            return None  # serve the file
        return 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, b"expired or missing token"


class ClientCredentials(httpx.Auth):
    """An OAuth2 client-credentials flow: fetch a token first, refresh it when it expires or is refused.

    Written as ``async_auth_flow`` so that only the token response is read whole: setting
    ``requires_response_body`` would make httpx read every answer (a whole segment) into memory.
    """

    def __init__(self, token_url: str) -> None:
        self.token_url = token_url
        self.token: str | None = None
        self.expires = 0.0
        self.lock = asyncio.Lock()

    async def refresh(self) -> AsyncGenerator[httpx.Request, httpx.Response]:
        response = yield httpx.Request("POST", self.token_url, data={"grant_type": "client_credentials"})
        await response.aread()
        answer = response.json()
        self.token, self.expires = answer["access_token"], time.monotonic() + answer["expires_in"] * 0.9

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.token is None or time.monotonic() >= self.expires:
            flow = self.refresh()
            token_request = await flow.__anext__()
            response = yield token_request
            with pytest.raises(StopAsyncIteration):
                await flow.asend(response)
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:  # refused anyway: one fresh token, then the answer stands
            flow = self.refresh()
            response = yield await flow.__anext__()
            with pytest.raises(StopAsyncIteration):
                await flow.asend(response)
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


def test_an_oauth2_token_is_fetched_first_and_refreshed_during_a_segmented_download(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    tokens = TokenServer(lifetime=0.6)
    server.add("/token", respond=tokens.token_endpoint)
    res = server.add("/f", data, throttle=1 * MiB, respond=tokens.guard)
    fetch(server.url("/f"), tmp_path / "f", connections=4, auth=ClientCredentials(server.url("/token")))
    assert (tmp_path / "f").read_bytes() == data
    served = [r for r in res.requests if r.status == 206]
    used = {r.headers["authorization"] for r in served}
    assert len(used) >= 2, used  # later segments went out with a refreshed token
    assert served[0].headers["authorization"] == "Bearer t1"


def test_a_refused_token_after_a_refresh_is_a_clear_error(server, make_data, tmp_path):
    tokens = TokenServer(lifetime=60)
    server.add("/token", respond=tokens.token_endpoint)
    server.add("/f", make_data(MiB), respond=lambda request: (401, {}, b"no"))
    with pytest.raises(dlman.HTTPStatusError, match="not authorised .HTTP 401") as failure:
        fetch(server.url("/f"), tmp_path / "f", auth=ClientCredentials(server.url("/token")), retries=0)
    assert failure.value.status == 401 and len(tokens.issued) == 2


KEY = b"shared secret"


class HMACAuth(httpx.Auth):
    """Signs method, path, Range and date, as object stores and internal APIs do."""

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        stamp = str(time.time())
        request.headers["X-Date"] = stamp
        request.headers["X-Signature"] = sign(request.method, request.url.raw_path.decode(),
                                              request.headers.get("range", ""), stamp)
        yield request


def sign(method: str, path: str, byte_range: str, stamp: str) -> str:
    return hmac.new(KEY, f"{method}\n{path}\n{byte_range}\n{stamp}".encode(), hashlib.sha256).hexdigest()


def test_an_hmac_signature_is_checked_by_the_server_on_every_request(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    checked: list[bool] = []

    def verify(request) -> tuple[int, dict[str, str], bytes] | None:
        expected = sign(request.method, request.target, request.headers.get("range", ""),
                        request.headers.get("x-date", ""))
        good = hmac.compare_digest(expected, request.headers.get("x-signature", ""))
        checked.append(good)
        return None if good else (403, {}, b"bad signature")

    res = server.add("/signed", data, throttle=4 * MiB, respond=verify)
    fetch(server.url("/signed"), tmp_path / "signed", connections=4, auth=HMACAuth())
    assert (tmp_path / "signed").read_bytes() == data
    assert len(checked) == len(res.requests) >= 4 and all(checked)


def test_auth_may_be_a_callable_or_a_tuple_as_httpx_accepts(server, make_data, tmp_path):
    res = server.add("/f", make_data(MiB))

    def sign(request: httpx.Request) -> httpx.Request:
        request.headers["X-Signed"] = "yes"
        return request

    fetch(server.url("/f"), tmp_path / "a", auth=sign)
    signed, res.requests = list(res.requests), []
    fetch(server.url("/f"), tmp_path / "b", auth=("user", "pw"))
    assert signed and all(r.headers.get("x-signed") == "yes" for r in signed)
    assert res.requests and all(r.headers["authorization"].startswith("Basic ") for r in res.requests)
    with pytest.raises(dlman.InvalidInputError, match="auth must be"):
        dlman.Engine(auth=42)


def test_auth_goes_only_to_the_origin_of_the_first_url(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    a = server.add("/m", data, throttle=4 * MiB)
    b = server2.add("/m", data, throttle=4 * MiB)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4, auth=("user", "pw"))
    assert (tmp_path / "m").read_bytes() == data
    assert a.requests and all(r.headers.get("authorization", "").startswith("Basic ") for r in a.requests)
    assert b.requests and not any("authorization" in r.headers for r in b.requests)


def test_cookies_are_sent_to_their_origin_only(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    a = server.add("/m", data, throttle=4 * MiB)
    b = server2.add("/m", data, throttle=4 * MiB)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4, cookies={"session": "abc"})
    assert all(r.headers.get("cookie") == "session=abc" for r in a.requests)
    assert b.requests and not any("cookie" in r.headers for r in b.requests)


# -- timeouts and TLS ----------------------------------------------------------------------------
def test_the_connect_timeout_of_an_httpx_timeout_is_honoured(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    waiting = []
    try:
        for _ in range(8):  # fill the accept queue: further connects hang in SYN_SENT
            peer = socket.socket()
            peer.setblocking(False)
            peer.connect_ex(listener.getsockname())
            waiting.append(peer)
        url = "http://127.0.0.1:%d/f" % listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(dlman.NetworkError, match="ConnectTimeout"):
            dlman.download(url, tmp_path / "f", timeout=httpx.Timeout(30, connect=0.5), retries=0)
        assert time.monotonic() - started < 10  # the read timeout (30 s) never came into it
    finally:
        for peer in waiting:
            peer.close()
        listener.close()




def test_verify_takes_a_ca_bundle_path_or_an_ssl_context(tls_server, ca, make_data, tmp_path):
    data = make_data(2 * MiB)
    tls_server.add("/f", data)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    fetch(tls_server.url("/f"), tmp_path / "by-path", verify=str(bundle), connections=2)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    fetch(tls_server.url("/f"), tmp_path / "by-context", verify=context, connections=2)
    assert (tmp_path / "by-path").read_bytes() == (tmp_path / "by-context").read_bytes() == data
    with pytest.raises(dlman.NetworkError, match="certificate verification failed"):
        fetch(tls_server.url("/f"), tmp_path / "untrusted", retries=0)


# -- the caller's client -------------------------------------------------------------------------
def test_downloads_go_through_the_callers_client_and_its_event_hooks(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/f", data, throttle=4 * MiB)
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(request.headers.get("range", ""))

    async def main() -> None:
        client = httpx.AsyncClient(event_hooks={"request": [on_request]}, headers={"X-App": "mine"})
        async with dlman.Engine(client=client, connections=4, timeout=5) as engine:
            await engine.download(server.url("/f"), tmp_path / "f")
        assert not client.is_closed  # the caller's to close
        await client.aclose()

    asyncio.run(main())
    assert (tmp_path / "f").read_bytes() == data
    assert len(seen) == len(res.requests) >= 4
    assert all(r.headers.get("x-app") == "mine" and r.headers.get("accept-encoding") == "identity"
               for r in res.requests)


def test_a_callers_client_never_sends_its_credentials_to_another_origin(server, server2, make_data, tmp_path):
    data = make_data(2 * MiB)
    target = server2.add("/f", data)
    server.add("/go", redirect_to=server2.url("/f"))

    async def main() -> None:
        client = httpx.AsyncClient(headers={"Authorization": "Bearer app", "X-Api-Key": "k"}, auth=("u", "p"))
        async with client, dlman.Engine(client=client, timeout=5) as engine:
            await engine.download(server.url("/go"), tmp_path / "f")
    asyncio.run(main())
    assert (tmp_path / "f").read_bytes() == data
    assert target.requests and not any(
        "authorization" in r.headers or "x-api-key" in r.headers for r in target.requests)


@pytest.mark.parametrize("client, options, words", [
    (httpx.Client(), {}, "must be an httpx.AsyncClient"),
    (None, {"verify": False}, "verify configure a client of dlman's own"),
    (None, {"proxy": "http://proxy:3128"}, "proxy configure a client"),
    ("closed", {}, "client is closed"),
])
def test_a_client_dlman_cannot_use_is_refused_at_construction(client, options, words):
    if client is None:
        client = httpx.AsyncClient()
    elif client == "closed":
        client = httpx.AsyncClient()
        asyncio.run(client.aclose())
    with pytest.raises(dlman.InvalidInputError, match=words):
        dlman.Engine(client=client, **options)


# -- how an embedding program tests its code ---------------------------------------------------------
FILE = bytes(range(256)) * 12_000  # 3 MB: split over several connections


def ranged(request: httpx.Request) -> httpx.Response:
    """A handler that serves FILE with real range semantics (what a test of a downloader needs)."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
    if not match:
        return httpx.Response(200, content=FILE)
    start = int(match.group(1))
    end = int(match.group(2)) + 1 if match.group(2) else len(FILE)
    return httpx.Response(206, content=FILE[start:end],
                          headers={"Content-Range": f"bytes {start}-{end - 1}/{len(FILE)}", "ETag": '"v1"'})


def test_with_pytest_httpx_a_segmented_download_is_mocked(httpx_mock, tmp_path):
    httpx_mock.add_callback(ranged, url="https://files.example/data.bin", is_reusable=True)
    result = dlman.download("https://files.example/data.bin", tmp_path, connections=4, min_segment=256 << 10)
    assert result.path.read_bytes() == FILE
    ranges = [r.headers.get("range") for r in httpx_mock.get_requests()]
    assert ranges[0] == "bytes=0-" and len(ranges) >= 4


def test_with_a_mock_transport_a_segmented_download_runs_through_the_callers_client(tmp_path):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("range", ""))
        return ranged(request)

    async def main() -> dlman.DownloadResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            async with dlman.Engine(client=client, connections=4, min_segment=256 << 10) as engine:
                return await engine.download("https://files.example/data.bin", tmp_path / "data.bin")
    result = asyncio.run(main())
    assert result.path.read_bytes() == FILE and len(seen) >= 4
