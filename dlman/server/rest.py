"""dlman's own REST API under ``/api/`` (described by ``openapi.py``), and its event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dlman import __version__
from dlman.errors import InvalidInputError
from dlman.options import redact
from dlman.server import openapi
from dlman.server.service import Service, info

SNAPSHOT_EVERY = 0.5  # seconds between looks at what changed, for the event stream
KEEPALIVE = 15.0      # seconds of silence before a comment line keeps proxies from closing the stream

Endpoint = Callable[[Request], Awaitable[Response]]


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or TooLarge as soon as it passes ``limit`` bytes (however it is sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Snapshots:
    """Every job and the totals, built at most once per SNAPSHOT_EVERY for all listeners."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._at = -SNAPSHOT_EVERY
        self._text = ""
        self._lock = asyncio.Lock()

    async def text(self) -> str:
        async with self._lock:
            now = time.monotonic()
            if now - self._at >= SNAPSHOT_EVERY * 0.8:
                jobs = await self.service.jobs_info()
                stat = {"speed": sum(j["speed"] for j in jobs),
                        "active": sum(1 for j in jobs if j["state"] == "active")}
                self._text = json.dumps({"jobs": jobs, "stat": stat}, separators=(",", ":"))
                self._at = now
            return self._text


def routes(service: Service, authorized: Callable[[Request], Awaitable[bool]], limit: int) -> list[Route]:
    """The REST endpoints; ``authorized`` answers whether a request carries the secret."""
    snapshots = Snapshots(service)

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def check(request: Request) -> Response:
            if not await authorized(request):
                return problem(401, "Unauthorized: send 'Authorization: Bearer SECRET'")
            try:
                return await endpoint(request)
            except InvalidInputError as error:
                return problem(400, redact(str(error)))
        return check

    async def job_or_404(request: Request) -> Any:
        try:
            job_id = int(request.path_params["id"])
        except ValueError:
            return None
        return await service.db(service.queue.get, job_id)

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": await service.jobs_info()})

    async def add_jobs(request: Request) -> Response:
        try:
            body = json.loads(await read_body(request, limit) or b"null")
        except TooLarge:
            return problem(413, f"the body is larger than {limit} bytes")
        except (UnicodeDecodeError, ValueError):
            return problem(400, "the body is not JSON")
        if not isinstance(body, dict):
            return problem(400, "expected a JSON object with 'urls' or 'manifest'")
        options = {key: body[key] for key in ("connections", "checksum", "headers", "overwrite") if key in body}
        directory = body.get("dir")
        if directory is not None and not isinstance(directory, str):
            raise InvalidInputError("dir must be a string")
        if isinstance(body.get("manifest"), str):
            new_jobs = service.plan_manifest(body["manifest"], directory, options)
        elif isinstance(body.get("urls"), list) and body["urls"]:
            out = body.get("out")
            if out is not None and not isinstance(out, str):
                raise InvalidInputError("out must be a string")
            new_jobs = [service.plan([str(u) for u in body["urls"]], directory, out, options)]
        else:
            return problem(400, "expected 'urls' (a non-empty list) or 'manifest' (text)")
        jobs = await service.add(new_jobs)
        return JSONResponse({"jobs": [info(job, service.view(job)) for job in jobs]}, status_code=201)

    async def get_job(request: Request) -> Response:
        job = await job_or_404(request)
        if job is None:
            return problem(404, "no such job")
        return JSONResponse(info(job, service.view(job)))

    async def act(request: Request, action: Callable[[list[int]], Awaitable[None]]) -> Response:
        job = await job_or_404(request)
        if job is None:
            return problem(404, "no such job")
        await action([job.id])
        job = await service.db(service.queue.get, job.id)
        return JSONResponse(info(job, service.view(job))) if job else problem(404, "no such job")

    async def pause_job(request: Request) -> Response:
        return await act(request, service.pause)

    async def resume_job(request: Request) -> Response:
        return await act(request, service.resume)

    async def remove_job(request: Request) -> Response:
        job = await job_or_404(request)
        if job is None:
            return problem(404, "no such job")
        delete = request.query_params.get("delete", "").lower() in ("1", "true", "yes")
        await service.remove([job.id], delete=delete)
        return Response(status_code=204)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last, quiet = "", time.monotonic()
            while not service.stopping.is_set():
                text = await snapshots.text()
                if text != last:
                    yield f"event: jobs\ndata: {text}\n\n"
                    last, quiet = text, time.monotonic()
                elif time.monotonic() - quiet > KEEPALIVE:
                    yield ": keep-alive\n\n"
                    quiet = time.monotonic()
                try:
                    await asyncio.wait_for(service.stopping.wait(), SNAPSHOT_EVERY)
                except asyncio.TimeoutError:
                    pass

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def about(request: Request) -> Response:
        return JSONResponse({"auth": service.config.secret is not None, "version": __version__})

    async def description(request: Request) -> Response:
        return JSONResponse(openapi.description())

    return [
        Route("/api/info", about, methods=["GET"]),
        Route("/api/openapi.json", description, methods=["GET"]),
        Route("/api/jobs", guarded(list_jobs), methods=["GET"]),
        Route("/api/jobs", guarded(add_jobs), methods=["POST"]),
        Route("/api/jobs/{id}", guarded(get_job), methods=["GET"]),
        Route("/api/jobs/{id}", guarded(remove_job), methods=["DELETE"]),
        Route("/api/jobs/{id}/pause", guarded(pause_job), methods=["POST"]),
        Route("/api/jobs/{id}/resume", guarded(resume_job), methods=["POST"]),
        Route("/api/events", guarded(events), methods=["GET"]),
    ]
