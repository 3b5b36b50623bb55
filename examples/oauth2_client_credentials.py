"""An OAuth2 client-credentials flow that fetches a token first and refreshes it when it expires,
even in the middle of a long segmented download: every segment request goes through the flow.

    python examples/oauth2_client_credentials.py URL DEST TOKEN_URL CLIENT_ID CLIENT_SECRET

Written as ``async_auth_flow`` so that only the token response is read whole (an auth that sets
``requires_response_body`` makes httpx read every answer, a whole segment, into memory).
"""

import asyncio
import sys
import time
from collections.abc import AsyncGenerator

import httpx

import dlman


class ClientCredentials(httpx.Auth):
    def __init__(self, token_url: str, client_id: str, client_secret: str) -> None:
        self.token_url = token_url
        self.credentials = (client_id, client_secret)
        self.token: str | None = None
        self.expires = 0.0

    def token_request(self) -> httpx.Request:
        request = httpx.Request("POST", self.token_url, data={"grant_type": "client_credentials"})
        return next(httpx.BasicAuth(*self.credentials).auth_flow(request))

    async def learn(self, response: httpx.Response) -> None:
        await response.aread()
        response.raise_for_status()
        answer = response.json()
        self.token = answer["access_token"]
        self.expires = time.monotonic() + 0.9 * float(answer.get("expires_in", 3600))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.token is None or time.monotonic() >= self.expires:
            await self.learn((yield self.token_request()))
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:  # revoked early: one new token, then the answer stands
            await self.learn((yield self.token_request()))
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


async def main(url: str, dest: str, token_url: str, client_id: str, secret: str) -> None:
    auth = ClientCredentials(token_url, client_id, secret)
    async with dlman.Engine(auth=auth, connections=8) as engine:
        result = await engine.download(url, dest)
    print(result.path, result.size)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
