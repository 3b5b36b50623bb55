"""The ASGI application: aria2's JSON-RPC (POST, GET, WebSocket), the REST API and the web page,
behind one guard that applies the security rules to every request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dlman.server import jsonrpc, rest, security
from dlman.server.config import ServeConfig
from dlman.server.jsonrpc import BadRequest, Dispatcher, Reply
from dlman.server.methods import Aria2Methods
from dlman.server.service import Service

log = logging.getLogger("dlman.server")

STATIC = Path(__file__).parent / "static"
FAILED_AUTH_DELAY = 1.0  # seconds, as aria2: one refused token answered at a time, each this late
JSONRPC_TYPE = "application/json-rpc"
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class Throttle:
    """Refused tokens are answered one at a time, each after a delay: guessing is slow however
    many connections a guesser opens, and the right token is never kept waiting."""

    def __init__(self, delay: float = FAILED_AUTH_DELAY) -> None:
        self.delay = delay
        self._lock = asyncio.Lock()

    async def failed(self) -> None:
        async with self._lock:
            await asyncio.sleep(self.delay)


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}


class Guard:
    """Every request passes here first: the Host rule, the origin rule, CORS, and an access log
    line that never holds a query string (a GET request's params hold the token)."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope.get("method", "WEBSOCKET")
        allowed = self.config.origins
        if not security.host_allowed(headers.get("host"), self.config.listen.loopback):
            await self._refuse(scope, receive, send, "this daemon answers to localhost names only")
            return
        if scope["type"] == "http" and method == "OPTIONS":
            answer = security.preflight_headers(headers, allowed)
            status = 403 if answer is None else 200
            await _plain(send, status, answer or {})
            self._log(method, scope["path"], status)
            return
        if not security.origin_allowed(headers, allowed):
            await self._refuse(scope, receive, send, "requests from this web origin are not allowed "
                                                     "(see serve --allow-origin)")
            return
        extra = security.cors_headers(headers, allowed)
        if scope["path"] in ("/", "/index.html"):
            extra.update(PAGE_HEADERS)
        extra["x-content-type-options"] = "nosniff"
        status_seen: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._log(method, scope["path"], status_seen[0] if status_seen else (101 if method == "WEBSOCKET" else 0))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why})
        else:
            await _plain(send, 403, {"content-type": "text/plain; charset=utf-8"}, why.encode() + b"\n")
        self._log(scope.get("method", "WEBSOCKET"), scope["path"], 403)

    @staticmethod
    def _log(method: str, path: str, status: int) -> None:
        log.info("%s %s %s", method, path, status)


async def _plain(send: Send, status: int, headers: dict[str, str], body: bytes = b"") -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build(config: ServeConfig, service: Service, shutdown: Callable[[], None]) -> ASGIApp:
    """The whole application for one daemon."""
    methods = Aria2Methods(service, shutdown)
    dispatcher = Dispatcher(methods, config.secret, config.max_batch)
    throttle = Throttle()

    async def answer(payload: Any) -> Reply:
        reply = await dispatcher.answer(payload)
        if reply.unauthorized:
            await throttle.failed()
        return reply

    def json_rpc(reply: Reply) -> Response:
        return JSONResponse(reply.body, status_code=reply.status, media_type=JSONRPC_TYPE)

    def bad(problem: BadRequest, status: int = 500) -> Response:
        return JSONResponse(jsonrpc.error(problem.code, problem.message), status_code=status,
                            media_type=JSONRPC_TYPE)

    async def post_jsonrpc(request: Request) -> Response:
        try:
            payload = jsonrpc.parse_body(await rest.read_body(request, config.max_request))
        except rest.TooLarge:
            return bad(BadRequest(jsonrpc.INVALID_REQUEST,
                                  f"Invalid Request: larger than {config.max_request} bytes."), 413)
        except BadRequest as problem:
            return bad(problem, jsonrpc.http_status(problem.code))
        return json_rpc(await answer(payload))

    async def get_jsonrpc(request: Request) -> Response:
        if "jsoncallback" in request.query_params:
            return bad(BadRequest(jsonrpc.INVALID_REQUEST,
                                  "Invalid Request: JSONP (jsoncallback) is not supported; use CORS."), 400)
        try:
            payload = jsonrpc.parse_query(request.url.query)
        except BadRequest as problem:
            return bad(problem, jsonrpc.http_status(problem.code))
        return json_rpc(await answer(payload))

    async def ws_jsonrpc(websocket: WebSocket) -> None:
        await websocket.accept()
        events = service.listen()
        sending = asyncio.Lock()

        async def send(body: Any) -> None:
            async with sending:
                await websocket.send_text(json.dumps(body))

        async def forward() -> None:
            while True:
                await send(await events.get())

        forwarding = asyncio.create_task(forward())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                try:
                    payload = jsonrpc.parse_body(text.encode("utf-8"))
                except BadRequest as problem:
                    await send(jsonrpc.error(problem.code, problem.message))
                    continue
                await send((await answer(payload)).body)
        except Exception as error:  # noqa: BLE001 - a client gone mid-send
            log.info("websocket closed: %s", type(error).__name__)
        finally:
            forwarding.cancel()
            service.unlisten(events)

    async def auth(request: Request) -> bool:
        if security.token_ok(security.bearer(request.headers.get("authorization")), config.secret):
            return True
        await throttle.failed()
        return False

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})

    app = Starlette(routes=[
        Route("/jsonrpc", post_jsonrpc, methods=["POST"]),
        Route("/jsonrpc", get_jsonrpc, methods=["GET"]),
        WebSocketRoute("/jsonrpc", ws_jsonrpc),
        *rest.routes(service, auth, config.max_request),
        Route("/", page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    return Guard(app, config)
