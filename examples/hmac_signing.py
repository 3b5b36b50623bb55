"""Sign every request (method, path, Range, date) with an HMAC, as object stores and internal
APIs require: each segment, retry and resume request is signed afresh.

    python examples/hmac_signing.py URL DEST KEY
"""

import hashlib
import hmac
import sys
import time

import httpx

import dlman


class HMACAuth(httpx.Auth):
    def __init__(self, key: bytes) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request):
        stamp = str(time.time())
        message = "\n".join([request.method, request.url.raw_path.decode(), request.headers.get("range", ""), stamp])
        request.headers["X-Date"] = stamp
        request.headers["X-Signature"] = hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()
        yield request


if __name__ == "__main__":
    url, dest, key = sys.argv[1:4]
    result = dlman.download(url, dest, auth=HMACAuth(key.encode()), connections=4)
    print(result.path, result.size)
