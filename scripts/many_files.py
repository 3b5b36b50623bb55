#!/usr/bin/env python3
"""Many small files through the queue: ``dlman run -j N`` over thousands of queued jobs.

Starts a private nginx on 127.0.0.1 (the one of ``scripts/bench.py``, installed the same way),
makes ``--files`` files of ``--size`` bytes once, and then, for each run and each dlman command
given (interleaved, so every command sees the same load), enqueues them all with
``add --later -i`` into a fresh home (not timed) and times ``run -j N`` (wall, CPU, peak RSS of
that process). Every output is checked against its sha256. Prints min / median / max of the
files per second, and the per-run ratio of each command to the first.

    python scripts/many_files.py --files 4000 --size 16K --runs 5
    python scripts/many_files.py --dlman "new=dlman" --dlman "old=/path/to/old/dlman"
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (the nginx, data and checks of the main benchmark)


@dataclass
class Run:
    label: str
    wall: float
    cpu: float
    rss_mib: float

    def rate(self, files: int) -> float:
        return files / self.wall


def parse_size(text: str) -> int:
    units = {"K": bench.KiB, "M": bench.MiB}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1:].upper()])
    return int(text)


def timed(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """Wall and CPU seconds and peak RSS (MiB) of one process; a failure ends the benchmark."""
    with open(log, "wb") as sink:
        began = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n" + "\n".join(tail))
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def default_dlman() -> str:
    beside = Path(sys.executable).with_name("dlman")
    return str(beside) if beside.exists() else f"{sys.executable} -m dlman"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--size", default="16K", help="bytes per file, K and M suffixes count 1024 (default 16K)")
    parser.add_argument("--jobs", type=int, default=16, help="dlman run -j (default 16)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dlman", action="append", metavar="[LABEL=]CMD",
                        help="a dlman command, split on spaces (repeatable; default: the dlman beside this Python)")
    parser.add_argument("--workdir", help="keep the data here for later invocations (default: a temporary one)")
    args = parser.parse_args()
    size = parse_size(args.size)
    commands: list[tuple[str, list[str]]] = []
    for number, text in enumerate(args.dlman or [default_dlman()]):
        label, sep, command = text.partition("=")
        if not sep or " " in label:
            label, command = f"dlman{number + 1}" if args.dlman and len(args.dlman) > 1 else "dlman", text
        commands.append((label, command.split()))
    if not bench.ensure_binary("nginx", "nginx", True):
        print("nginx is required (apt-get install nginx)", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dlman-many-")).resolve()
    data = work / "data"
    folder = f"many-{args.files}-{size}"
    bench.note(f"data: {args.files} files of {bench.human_size(size)} in {work} ...")
    files = [bench.make_file(data, f"{folder}/f{i:05d}.bin", size) for i in range(args.files)]
    os.chmod(work, 0o755)
    for directory in (data, data / folder):
        os.chmod(directory, 0o755)
    nginx = bench.Nginx(work, data, bench.free_port(), bench.free_port(), bench.free_port(), None, None)
    nginx.start()
    env = bench.tool_env()
    runs: list[list[Run]] = []
    try:
        base = f"http://127.0.0.1:{nginx.http_port}/data/{folder}/"
        manifest = work / "manifest.txt"
        manifest.write_text("".join(f"{base}{Path(f.rel).name}\n  out={Path(f.rel).name}\n" for f in files))
        for number in range(args.runs):
            rotation = commands[number % len(commands):] + commands[:number % len(commands)]
            this_run = []
            for label, command in rotation:
                home, out = work / "home", work / "out"
                shutil.rmtree(home, ignore_errors=True)
                bench.clean_dir(out)
                log = work / f"log-{label}.txt"
                timed([*command, "--home", str(home), "-q", "add", "--later", "-d", str(out), "-i", str(manifest)],
                      env, log)
                os.sync()
                wall, cpu, rss = timed([*command, "--home", str(home), "-q", "run", "-j", str(args.jobs)], env, log)
                problem = bench.verify(out, files)
                if problem:
                    raise SystemExit(f"{label}: {problem}")
                run = Run(label, wall, cpu, rss)
                this_run.append(run)
                bench.note(f"[run {number + 1}/{args.runs}] {label}: {wall:.2f} s, {run.rate(args.files):.0f} files/s,"
                           f" CPU {cpu:.2f} s, RSS {rss:.0f} MiB")
            runs.append(this_run)
    finally:
        nginx.stop()
        shutil.rmtree(work / "out", ignore_errors=True)
        shutil.rmtree(work / "home", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor() or "?")
    print(f"\n{args.files} files of {bench.human_size(size)}, `dlman run -j {args.jobs}`, {args.runs} runs;"
          f" {cpu_model}, {os.cpu_count()} CPUs\n")
    first = commands[0][0]
    print(f"| command | files/s min | median | max | median CPU s | peak RSS MiB | wall / {first} |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for label, _ in commands:
        mine = [r for run in runs for r in run if r.label == label]
        rates = sorted(r.rate(args.files) for r in mine)
        ratios = [next(r for r in run if r.label == label).wall / next(r for r in run if r.label == first).wall
                  for run in runs]
        print(f"| {label} | {rates[0]:.0f} | {statistics.median(rates):.0f} | {rates[-1]:.0f} |"
              f" {statistics.median(r.cpu for r in mine):.2f} | {max(r.rss_mib for r in mine):.0f} |"
              f" {statistics.median(ratios):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
