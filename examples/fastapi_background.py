"""A FastAPI endpoint that starts a download in the background and reports its progress.

    pip install fastapi uvicorn
    uvicorn examples.fastapi_background:app
    curl -X POST 'localhost:8000/downloads?url=https://example.org/big.iso'
    curl localhost:8000/downloads/1

One engine for the whole application (opened and closed with it), one task per download.
"""

import asyncio
import itertools
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

import dlman

DOWNLOADS = "downloads/"
state: dict[int, dict] = {}
tasks: dict[int, asyncio.Task] = {}
ids = itertools.count(1)


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with dlman.Engine(connections=8) as engine:
        app.state.engine = engine
        yield
        for task in tasks.values():
            task.cancel()  # partial data and resume state are kept
        await asyncio.gather(*tasks.values(), return_exceptions=True)


app = FastAPI(lifespan=lifespan)


async def run(job: int, url: str) -> None:
    def on_progress(progress: dlman.Progress) -> None:
        state[job].update(downloaded=progress.downloaded, total=progress.total)

    try:
        result = await app.state.engine.download(url, DOWNLOADS, on_progress=on_progress)
        state[job].update(status="done", path=str(result.path))
    except dlman.DownloadError as error:
        state[job].update(status="failed", error=str(error))


@app.post("/downloads")
async def start(url: str) -> dict:
    job = next(ids)
    state[job] = {"id": job, "url": url, "status": "running", "downloaded": 0, "total": None}
    tasks[job] = asyncio.create_task(run(job, url))
    return state[job]


@app.get("/downloads/{job}")
async def progress(job: int) -> dict:
    if job not in state:
        raise HTTPException(404, "no such download")
    return state[job]
