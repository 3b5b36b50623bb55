"""Cancel a download (here: after a deadline), then resume it later from where it stopped.

A cancelled download writes what it received, saves its resume state and raises
CancelledError; the next download of the same URL to the same path asks only for the rest.

    python examples/cancel.py URL DEST SECONDS
"""

import asyncio
import sys

import dlman


async def main(url: str, dest: str, seconds: float) -> None:
    async with dlman.Engine() as engine:
        try:
            await asyncio.wait_for(engine.download(url, dest), seconds)
            print("finished within the deadline")
            return
        except asyncio.TimeoutError:
            print("cancelled; the partial data and its state are kept")
        result = await engine.download(url, dest)  # resumes
        print(result.path, result.size)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
