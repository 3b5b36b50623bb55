"""JSON-RPC 2.0 as aria2 speaks it, independent of the transport (POST, GET, WebSocket).

* A request needs an ``id`` and a string ``method``; ``params`` is a list (named params are
  not supported, as in aria2). A batch is a list of requests; it and ``system.multicall`` are
  bounded (``max_batch``).
* The token is aria2's: a first parameter ``"token:SECRET"`` is taken off the list and
  compared in constant time; a wrong or missing one answers code 1, ``Unauthorized``.
  ``system.listMethods`` and ``system.listNotifications`` need none; each call inside
  ``system.multicall`` carries its own.
* GET: ``method``, ``id`` and ``params`` (base64 of the JSON list) in the query; without
  ``method`` and ``id``, ``params`` is a whole batch.
* HTTP statuses of a single error as aria2 sends them: 400 for a method's error or an invalid
  request, 404 for -32601, 500 otherwise; a batch is always 200.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from dlman.errors import InvalidInputError
from dlman.options import redact
from dlman.server import aria2
from dlman.server.aria2 import Aria2Error
from dlman.server.security import split_token, token_ok

log = logging.getLogger("dlman.server")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
UNAUTHORIZED = "Unauthorized"

Call = Callable[[str, list[Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Reply:
    """What to send back: the HTTP status, the JSON body, and whether any call was refused its token."""

    status: int
    body: Any
    unauthorized: bool = False


class BadRequest(Exception):
    """A request that is not JSON-RPC at all (bad JSON, bad shape): answered with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"id": request_id, "jsonrpc": "2.0", "error": {"code": code, "message": message}}


def http_status(code: int) -> int:
    """aria2's HTTP status for a single error response."""
    return {1: 400, INVALID_REQUEST: 400, -32601: 404}.get(code, 500)


def parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(PARSE_ERROR, "Parse error.") from None


def parse_query(query: str) -> Any:
    """The request a GET query carries (aria2's form: base64 ``params``; a batch without
    ``method`` and ``id``)."""
    # Percent-decoding only: a "+" in base64 is a plus, not a space (parse_qs would turn it into one).
    fields = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        fields[unquote(key)] = unquote(value)
    try:
        decoded = base64.b64decode(fields.get("params", "").strip(), validate=True).decode("utf-8")
        params = json.loads(decoded) if decoded else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(PARSE_ERROR, "Parse error.") from None
    if "method" not in fields and "id" not in fields:
        if params is None:
            raise BadRequest(PARSE_ERROR, "Parse error.")
        return params
    request: dict[str, Any] = {"jsonrpc": "2.0"}
    if "method" in fields:
        request["method"] = fields["method"]
    if "id" in fields:
        request["id"] = fields["id"]  # a string, as aria2 makes it
    if params is not None:
        request["params"] = params
    return request


class Dispatcher:
    """Runs requests: the token rule, batches, multicall, errors in aria2's shape.

    ``call(method, params)`` does the work of one method, its token already checked;
    it raises Aria2Error (or InvalidInputError) for an error the client should see.
    """

    def __init__(self, call: Call, secret: str | None, max_batch: int,
                 methods: frozenset[str] = frozenset(aria2.METHODS)) -> None:
        self._call = call
        self._secret = secret
        self._max_batch = max_batch
        self._methods = methods

    async def answer(self, payload: Any) -> Reply:
        """The reply to a parsed request or batch."""
        if isinstance(payload, list):
            if len(payload) > self._max_batch:
                body = error(INVALID_REQUEST, f"Invalid Request: a batch holds at most {self._max_batch} calls.")
                return Reply(400, body)
            replies = [await self._one(item) for item in payload]
            return Reply(200, [body for body, _ in replies], any(refused for _, refused in replies))
        body, refused = await self._one(payload)
        code = body.get("error", {}).get("code")
        return Reply(200 if code is None else http_status(code), body, refused)

    async def _one(self, request: Any) -> tuple[dict[str, Any], bool]:
        if not isinstance(request, Mapping) or "id" not in request:
            return error(INVALID_REQUEST, "Invalid Request."), False
        request_id = request["id"]
        method = request.get("method")
        if not isinstance(method, str):
            return error(INVALID_REQUEST, "Invalid Request.", request_id), False
        params = request.get("params", [])
        if not isinstance(params, list):
            return error(INVALID_PARAMS, "Invalid params.", request_id), False
        result, refused = await self.execute(method, params)
        if isinstance(result, Aria2Error):
            return error(result.code, str(result), request_id), refused
        return {"id": request_id, "jsonrpc": "2.0", "result": result}, refused

    async def execute(self, method: str, params: list[Any]) -> tuple[Any, bool]:
        """One call: its result, or the Aria2Error to answer; and whether its token was refused."""
        try:
            if method == "system.multicall":
                return await self._multicall(params)
            if method not in self._methods:
                raise Aria2Error(f"No such method: {method}")
            token, rest = split_token(params)
            if method not in aria2.NO_TOKEN and not token_ok(token, self._secret):
                return Aria2Error(UNAUTHORIZED), True
            log.info("rpc %s", method)
            return await self._call(method, rest), False
        except Aria2Error as problem:
            return problem, False
        except InvalidInputError as problem:
            return Aria2Error(redact(str(problem))), False
        except Exception as problem:  # noqa: BLE001 - one bad call must not end the connection
            log.error("rpc %s: unexpected error", method, exc_info=problem)
            return Aria2Error(f"internal error: {type(problem).__name__}"), False

    async def _multicall(self, params: list[Any]) -> tuple[Any, bool]:
        if not params or not isinstance(params[0], list):
            raise Aria2Error("The parameter at 0 is required but missing." if not params
                             else "The parameter at 0 has wrong type.")
        calls = params[0]
        if len(calls) > self._max_batch:
            raise Aria2Error(f"system.multicall takes at most {self._max_batch} calls.")
        results: list[Any] = []
        refused_any = False
        for spec in calls:
            if not isinstance(spec, Mapping):
                results.append({"code": 1, "message": "system.multicall expected struct."})
                continue
            name = spec.get("methodName")
            if not isinstance(name, str):
                results.append({"code": 1, "message": "Missing methodName."})
                continue
            if name == "system.multicall":
                results.append({"code": 1, "message": "Recursive system.multicall forbidden."})
                continue
            inner = spec.get("params")
            result, refused = await self.execute(name, inner if isinstance(inner, list) else [])
            refused_any = refused_any or refused
            if isinstance(result, Aria2Error):
                results.append({"code": result.code, "message": str(result)})
            else:
                results.append([result])
        return results, refused_any
