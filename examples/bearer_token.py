"""Download with a bearer token (the token goes only to the URL's own origin, never to mirrors
on other hosts or across a redirect to another host).

    python examples/bearer_token.py URL DEST TOKEN
"""

import sys

import httpx

import dlman


class Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


if __name__ == "__main__":
    url, dest, token = sys.argv[1:4]
    # headers={"Authorization": f"Bearer {token}"} works too; an httpx.Auth is the httpx way.
    result = dlman.download(url, dest, auth=Bearer(token))
    print(result.path, result.size)
