"""Progress into a tqdm bar of your own: dlman prints nothing, it calls back.

    python examples/tqdm_progress.py URL DEST
"""

import sys

from tqdm import tqdm

import dlman


def download_with_bar(url: str, dest: str) -> dlman.DownloadResult:
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=dest) as bar:
        def on_progress(progress: dlman.Progress) -> None:
            if progress.total is not None:
                bar.total = progress.total
            bar.update(progress.downloaded - bar.n)
        return dlman.download(url, dest, on_progress=on_progress)


if __name__ == "__main__":
    result = download_with_bar(*sys.argv[1:3])
    print(result.path, result.size)
