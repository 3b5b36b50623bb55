"""Many files at once over one engine: one HTTP client, one rate limit and one per-host
connection cap for all of them.

    python examples/many_files.py DEST_DIR URL [URL...]
"""

import asyncio
import sys

import dlman


async def main(dest: str, urls: list[str]) -> None:
    async with dlman.Engine(connections=4, limit_rate="20M") as engine:
        results = await asyncio.gather(*(engine.download(url, dest + "/") for url in urls),
                                       return_exceptions=True)
    for url, result in zip(urls, results):
        if isinstance(result, dlman.DownloadError):
            print("failed", url, result)
        else:
            print("done", result.path, result.size)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
