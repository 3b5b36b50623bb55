#!/usr/bin/env python3
"""Benchmark dlman side by side with curl, aria2c and axel on a private local nginx.

Run ``python3 scripts/bench.py --help`` for the full description.  Standard library only
(Python 3.10+); the optional ``trustme`` package is used for the TLS certificate when the
``openssl`` command is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CONNECTIONS = 16  # parallel connections per download for every segmented tool


# ---------------------------------------------------------------------------------------------
# The command lines.  Everything a tool is asked to do lives in this table.
#
# A builder gets a `Job` (see below) and returns argv.  Useful fields:
#   j.url        URL of the single file            j.name      its file name
#   j.out        output directory (empty, exists)  j.https     True for the HTTPS scenarios
#   j.http2      True for the HTTP/2 scenario
#   j.manifest   manifest in the SPEC / aria2 input-file format (URL + "  out=NAME" lines)
#   j.curl_config()  writes a curl config (url/output pairs) into the work dir, returns its path
#   j.dlman      argv prefix that starts dlman     j.home      dlman's --home directory
# "single" builds one download; "many" maps row labels to builders for the manifest scenario
# (several labels give several rows, e.g. curl sequential and curl --parallel).  Optional
# "https_probe": (argv, text): the tool runs the HTTPS scenarios only if argv's output has text.
# "http2": False for a tool that cannot speak HTTP/2 (skipped in that scenario).
# ---------------------------------------------------------------------------------------------
def _if(cond: bool, *args: str) -> list[str]:
    return list(args) if cond else []


ARIA2_COMMON = ["--no-conf", f"-x{CONNECTIONS}", f"-s{CONNECTIONS}", "-k1M",
                "--allow-overwrite=true", "--auto-file-renaming=false",
                "--file-allocation=none", "-q"]

COMMANDS: dict[str, dict] = {
    "dlman": {
        "single": lambda j: [*j.dlman, "--home", j.home, "-q", "add", "-c", str(CONNECTIONS),
                             "-d", j.out, *_if(j.https, "--insecure"), *_if(j.http2, "--http2"), j.url],
        "many": {
            "dlman": lambda j: [*j.dlman, "--home", j.home, "-q", "add", "-c", str(CONNECTIONS),
                                "-j", "16", "-d", j.out, *_if(j.https, "--insecure"),
                                "-i", j.manifest],
        },
    },
    "curl": {
        # -q first: ignore ~/.curlrc.  -f: an HTTP error is a failure.
        "single": lambda j: ["curl", "-q", "-sS", "-f", *_if(j.https, "-k"), *_if(j.http2, "--http2"),
                             "-o", os.path.join(j.out, j.name), j.url],
        "many": {
            "curl": lambda j: ["curl", "-q", "-sS", "-f", *_if(j.https, "-k"),
                               "-K", j.curl_config()],
            "curl-par64": lambda j: ["curl", "-q", "-sS", "-f", *_if(j.https, "-k"),
                                     "--parallel", "--parallel-max", "64",
                                     "-K", j.curl_config()],
        },
    },
    "aria2c": {
        "single": lambda j: ["aria2c", *ARIA2_COMMON, *_if(j.https, "--check-certificate=false"),
                             "-d", j.out, "-o", j.name, j.url],
        "many": {
            "aria2c": lambda j: ["aria2c", *ARIA2_COMMON, "-j16",
                                 *_if(j.https, "--check-certificate=false"),
                                 "-d", j.out, "-i", j.manifest],
        },
        "http2": False,
    },
    "axel": {
        "single": lambda j: ["axel", "-n", str(CONNECTIONS), "-q", *_if(j.https, "-k"),
                             "-o", os.path.join(j.out, j.name), j.url],
        "many": {},  # axel has no input-file mode: skipped in scenario 3
        # older axels have no -k: skip HTTPS unless `axel --help` mentions --insecure
        "https_probe": (["axel", "--help"], "--insecure"),
        "http2": False,
    },
}

# Debian package that provides each tool (None: not installable with apt-get).
APT_PACKAGE = {"dlman": None, "curl": "curl", "aria2c": "aria2", "axel": "axel"}

HELP_DESCRIPTION = """\
Benchmark dlman against curl, aria2c and axel, on a private nginx started by this script.

What it does
  * Starts its own nginx (installs it with apt-get when missing and running as root;
    otherwise prints how to install it and exits with status 2) with its own config,
    prefix, temp dirs, error log and pid file in a work directory; it listens on
    127.0.0.1 only: one HTTP port and one HTTPS port with a self-signed certificate
    (made with `openssl req -x509`, else with the `trustme` Python package).  sendfile
    and keep-alive are on; the /throttled/ location adds `limit_rate 8m` (per connection).
    Only that nginx is stopped at the end (also on Ctrl-C, SIGTERM and errors).
  * Generates the test data once (os.urandom, sha256 recorded) and reuses it; with
    --workdir DIR it is kept and reused by later invocations too.
  * Runs every tool in rotating round-robin order (run r starts with a different tool),
    deletes outputs between runs, checks each output's sha256 (a wrong or missing file,
    or a non-zero exit status, makes the run FAILED; it is never timed silently), and
    records wall time, CPU time (user+sys of the child, from os.wait4) and peak RSS
    (ru_maxrss of the child).  The tool is started by a tiny `python -I -S` launcher that
    forks, execs and reaps it, because a process forked from this script would inherit
    its peak RSS; the launcher puts a floor of about 7 MiB under the RSS column.
  * Prints one markdown table per scenario; --json FILE saves every raw measurement.

Scenarios (sizes are multiplied by --size-scale)
  1  1 GiB file, plain HTTP/1.1, unthrottled
  2  256 MiB file, nginx `limit_rate 8m` per connection (rewards parallel connections)
  3  500 files of 256 KiB through a manifest: dlman `add -i manifest -j 16`,
     aria2c `-i manifest -j16`; curl over a config of all URLs, both sequentially
     ("curl") and with `--parallel --parallel-max 64` ("curl-par64"); axel skipped
  4  1 GiB over HTTPS with the self-signed certificate (dlman --insecure, curl -k,
     aria2c --check-certificate=false, axel -k; an axel without -k is skipped)
  5  scenario 2 behind 40 ms of round-trip delay: a private network namespace and veth
     pair with `tc netem delay 20ms` on both ends; nginx listens on the host end, the
     tools run in the namespace (`ip netns exec`).  Needs root, `ip`, `tc` and the netem
     qdisc; skipped with a note otherwise.  Removed at the end.
  6  1 GiB over HTTP/2 with TLS (nginx `listen ... ssl http2`): dlman --http2 --insecure,
     curl --http2 -k; aria2c and axel speak no HTTP/2 and are skipped
  No traffic goes anywhere but 127.0.0.1 and that private veth pair; proxy variables are
  removed from the tools' environment, curl ignores ~/.curlrc (-q), aria2c its config.

Tools and their command lines (edit COMMANDS at the top of the script)
  dlman   DLMAN --home WORK/dlman-home -q add -c 16 -d OUT URL
          (+ --insecure for HTTPS, --http2 for scenario 6; -i manifest -j 16 for scenario 3).  DLMAN is --dlman,
          else the `dlman` script beside this Python, else `python -m dlman`, else PATH.
          The home directory is wiped before each dlman run.
  curl    curl -q -sS -f -o OUT/NAME URL
  aria2c  aria2c -x16 -s16 -k1M --allow-overwrite=true --auto-file-renaming=false
          --file-allocation=none -q -d OUT -o NAME URL
  axel    axel -n 16 -q -o OUT/NAME URL
  A missing tool is installed with apt-get when possible (root), else skipped with a note.
  A tool that fails has the tail of its stderr printed once and its runs marked FAILED.

Reading the tables
  wall s and CPU s are min / median / max over the successful runs; MiB/s and CPU s/GiB
  come from the medians; peak RSS is the largest ru_maxrss seen (MiB).  The
  "dlman/X" columns are the median over runs of the per-run ratio dlman time / X time
  (same round-robin round, so both ran under similar load): below 1.00x dlman was faster
  (or used less CPU).  On a small noisy machine, trust those ratios more than the
  absolute figures.  Note: dlman flushes its file to disk before renaming it into place
  (see SPEC) while the other tools do not; outputs are written under --out-dir (default
  WORK/out); a tmpfs such as /dev/shm removes that difference.

Exit status: 0 when every run succeeded, 1 when any run FAILED, 2 when nothing could run
(no nginx, no tool, bad option), 130 after Ctrl-C, 143 after SIGTERM.
"""

HELP_EPILOG = """\
examples
  python3 scripts/bench.py                                  # everything, 5 runs each
  python3 scripts/bench.py --size-scale 0.05 --runs 1       # quick smoke run
  python3 scripts/bench.py --scenario 1,4 --tools dlman,aria2c --json results.json
  python3 scripts/bench.py --scenario 1 --tools dlman,curl --compare old=/path/to/old/bin/dlman
  python3 scripts/bench.py --workdir /var/tmp/dlbench --out-dir /dev/shm/dlbench-out
"""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Raised from a SIGTERM/SIGHUP handler so that the finally blocks clean up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def run_quiet(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def first_line(argv: list[str]) -> str:
    try:
        r = run_quiet(argv, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "?"
    out = r.stdout.strip()
    if r.returncode != 0:
        return f"? (`{' '.join(argv)}` failed)"
    return out.splitlines()[0] if out else "?"


def cpu_model() -> str:
    """The CPU model as the kernel names it (else what platform knows), e.g. "AMD EPYC"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{n} B"


_apt_updated = False


def apt_install(package: str) -> bool:
    """Install a Debian package when we are root and apt-get exists; True on success."""
    global _apt_updated
    if not (is_root() and shutil.which("apt-get")):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in range(2):
        note(f"installing {package} with apt-get ...")
        r = run_quiet(["apt-get", "install", "-y", "-q", package], env=env)
        if r.returncode == 0:
            return True
        if attempt == 0 and not _apt_updated:
            _apt_updated = True
            run_quiet(["apt-get", "update", "-q"], env=env)
            continue
        note(f"apt-get install {package} failed:\n" + "\n".join(r.stdout.splitlines()[-5:]))
    return False


def ensure_binary(binary: str, package: str | None, allow_install: bool) -> bool:
    if shutil.which(binary):
        return True
    if package and allow_install and apt_install(package):
        return shutil.which(binary) is not None
    return False


# ---------------------------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DataFile:
    rel: str  # path relative to the data root, also the URL path below /data/ or /throttled/
    size: int
    sha256: str


def make_file(root: Path, rel: str, size: int) -> DataFile:
    """Create root/rel with `size` random bytes, unless a previous invocation already did."""
    path = root / rel
    side = path.with_name(path.name + ".sha256")
    if path.exists() and side.exists() and path.stat().st_size == size:
        digest = side.read_text().split()[0]
        if len(digest) == 64:
            return DataFile(rel, size, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    side.write_text(h.hexdigest() + "\n")
    return DataFile(rel, size, h.hexdigest())


def warm_cache(root: Path, files: list[DataFile]) -> None:
    """Read the source files once so every tool starts with them in the page cache."""
    for df in files:
        with open(root / df.rel, "rb") as f:
            while f.read(8 * MiB):
                pass


# ---------------------------------------------------------------------------------------------
# TLS certificate
# ---------------------------------------------------------------------------------------------
def make_certificate(tls_dir: Path) -> tuple[Path, Path] | None:
    tls_dir.mkdir(parents=True, exist_ok=True)
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    if shutil.which("openssl"):
        base = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", "7", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)]
        for extra in (["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], []):
            if run_quiet(base + extra).returncode == 0:
                return cert, key
    if importlib.util.find_spec("trustme") is not None:
        import trustme  # optional dependency

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        both = tls_dir / "leaf.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(both))
        return both, both
    return None


# ---------------------------------------------------------------------------------------------
# Private network namespace with 40 ms RTT (scenario 5)
# ---------------------------------------------------------------------------------------------
class NetNS:
    """A namespace and a veth pair of our own, each end delayed by 20 ms with netem."""

    def __init__(self):
        tag = str(os.getpid() % 100000)
        self.name = f"dlbench{tag}"
        self.host_if, self.ns_if = f"dlbh{tag}", f"dlbn{tag}"
        self.host_ip = self.ns_ip = ""
        self.created_ns = self.created_link = False
        self.rtt_ms: float | None = None

    def _ip(self, *args: str, ns: bool = False) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.name] if ns else []
        return run_quiet([*prefix, *args])

    def setup(self) -> str | None:
        """Build it; returns None on success, else the reason it cannot be built."""
        if not is_root():
            return "needs root (ip netns / tc)"
        for tool in ("ip", "tc"):
            if not shutil.which(tool):
                return f"`{tool}` not found (Debian package iproute2)"
        used = (run_quiet(["ip", "-o", "-4", "addr"]).stdout
                + run_quiet(["ip", "-4", "route"]).stdout)
        for third in range(213, 253):
            if f"10.254.{third}." not in used:
                self.host_ip, self.ns_ip = f"10.254.{third}.1", f"10.254.{third}.2"
                break
        else:
            return "no free 10.254.x.0/30 subnet"
        steps = [
            (["ip", "netns", "add", self.name], False),
            (["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
             False),
            (["ip", "link", "set", self.ns_if, "netns", self.name], False),
            (["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if], False),
            (["ip", "link", "set", self.host_if, "up"], False),
            (["ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if], True),
            (["ip", "link", "set", self.ns_if, "up"], True),
            (["ip", "link", "set", "lo", "up"], True),
            (["tc", "qdisc", "add", "dev", self.host_if, "root", "netem", "delay", "20ms",
              "limit", "100000"], False),
            (["tc", "qdisc", "add", "dev", self.ns_if, "root", "netem", "delay", "20ms",
              "limit", "100000"], True),
        ]
        for argv, in_ns in steps:
            r = self._ip(*argv, ns=in_ns)
            if r.returncode != 0:
                self.cleanup()
                why = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "failed"
                if "netem" in argv:
                    why += " (the kernel lacks the netem qdisc, module sch_netem)"
                return f"`{' '.join(argv)}`: {why}"
            if argv[:3] == ["ip", "netns", "add"]:
                self.created_ns = True
            if argv[:3] == ["ip", "link", "add"]:
                self.created_link = True
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def measure_rtt(self, port: int) -> float | None:
        code = ("import socket,time\nt=time.perf_counter()\n"
                f"s=socket.create_connection(('{self.host_ip}',{port}),5)\n"
                "print((time.perf_counter()-t)*1000)")
        r = run_quiet(self.wrap([sys.executable, "-c", code]), timeout=30)
        try:
            self.rtt_ms = float(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.rtt_ms = None
        return self.rtt_ms

    def cleanup(self) -> None:
        if self.created_ns:
            run_quiet(["ip", "netns", "del", self.name])  # also removes the ns end of the veth
            self.created_ns = False
        if self.created_link and self.host_if in run_quiet(["ip", "-o", "link"]).stdout:
            run_quiet(["ip", "link", "del", self.host_if])
        self.created_link = False


# ---------------------------------------------------------------------------------------------
# Our own nginx
# ---------------------------------------------------------------------------------------------
NGINX_CONF = """\
# generated by scripts/bench.py -- a private nginx for the benchmark
{user_line}
worker_processes auto;
pid {pid};
error_log {error_log} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{http_port};
{extra_listen}{ssl_block}
        root {data};
        location /data/ {{ alias {data}/; }}
        location /throttled/ {{ alias {data}/; limit_rate 8m; }}
    }}
}}
"""

SSL_BLOCK = """\
        listen 127.0.0.1:{https_port} ssl;
        listen 127.0.0.1:{h2_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:dlbench:1m;
"""


class Nginx:
    def __init__(self, work: Path, data: Path, http_port: int, https_port: int, h2_port: int,
                 tls: tuple[Path, Path] | None, extra_ip: str | None):
        self.dir = work / "nginx"
        self.data, self.tls, self.extra_ip = data, tls, extra_ip
        self.http_port, self.https_port, self.h2_port = http_port, https_port, h2_port
        self.proc: subprocess.Popen | None = None
        self.error_log = self.dir / "error.log"

    def start(self) -> None:
        tmp = self.dir / "tmp"
        for d in (self.dir / "logs", tmp):
            d.mkdir(parents=True, exist_ok=True)
        ssl_block = ""
        if self.tls:
            ssl_block = SSL_BLOCK.format(https_port=self.https_port, h2_port=self.h2_port,
                                         cert=self.tls[0], key=self.tls[1])
        extra = f"        listen {self.extra_ip}:{self.http_port};\n" if self.extra_ip else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            user_line="user root;" if is_root() else "", pid=self.dir / "nginx.pid",
            error_log=self.error_log, tmp=tmp, http_port=self.http_port, extra_listen=extra,
            ssl_block=ssl_block, data=self.data))
        argv = ["nginx", "-p", f"{self.dir}/", "-c", str(conf), "-g", "daemon off;"]
        if "-e filename" in first_line_all(["nginx", "-h"]):
            argv[1:1] = ["-e", str(self.error_log)]
        out = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        out.close()
        ports = [self.http_port] + ([self.https_port, self.h2_port] if self.tls else [])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if all(_port_open(p) for p in ports):
                return
            time.sleep(0.05)
        logs = ""
        for f in (self.dir / "stderr.log", self.error_log):
            if f.exists():
                logs += f.read_text(errors="replace")
        self.stop()
        raise RuntimeError("nginx did not start:\n" + "\n".join(logs.splitlines()[-15:]))

    def stop(self) -> None:
        """Stop the nginx we started (by its pid), nothing else."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGQUIT)  # graceful: master waits for its workers
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def first_line_all(argv: list[str]) -> str:
    try:
        return run_quiet(argv, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Scenarios, jobs, runs
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scenario:
    number: int
    title: str
    kind: str  # "single" or "many"
    location: str  # "data" or "throttled"
    https: bool = False
    http2: bool = False
    netns: bool = False
    files: list[DataFile] = dataclasses.field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclasses.dataclass
class Job:
    url: str
    name: str
    out: str
    https: bool
    http2: bool
    manifest: str
    home: str
    dlman: list[str]
    workdir: str
    _urls: list[tuple[str, str]]

    def curl_config(self) -> str:
        path = os.path.join(self.workdir, f"curl-{os.path.basename(self.out)}.cfg")
        with open(path, "w") as f:
            for url, name in self._urls:
                f.write(f'url = "{url}"\noutput = "{os.path.join(self.out, name)}"\n')
        return path


@dataclasses.dataclass
class RunResult:
    scenario: int
    row: str
    round: int
    position: int
    argv: list[str]
    ok: bool
    error: str | None
    exit_status: int | None
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    bytes: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


_current: dict[str, subprocess.Popen | None] = {"proc": None}


def kill_current() -> None:
    """Stop the run in progress: the launcher kills and reaps its tool, then whatever is
    left in the process group we created for it is killed."""
    p = _current["proc"]
    if p is None or p.returncode is not None:
        return
    try:
        p.terminate()
        p.wait(5)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # its own session/group, started by us
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        pass


# The measured tool is started by this small launcher, a fresh `python -I -S` process.
# Why: a child forked from this (large) Python process inherits its peak RSS, and the kernel
# carries that high-water mark across exec, so ru_maxrss of a directly spawned tool would be
# this script's RSS.  The launcher is small (a ~7 MiB floor, below every tool measured), forks
# and execs the tool, times it, reaps it with os.wait4 and writes the tool's own rusage as JSON.
LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
try:
    pid = os.fork()
except OSError as e:
    sys.exit(f"fork: {e}")
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, f"cannot run {argv[0]}: {e}\n".encode())
    os._exit(127)
import signal
def stop(signum, frame):  # asked to stop: kill the tool, still reap it and report
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGTERM, stop)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"status": os.waitstatus_to_exitcode(status), "wall": wall, "utime": ru.ru_utime,
               "stime": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, f)
"""


@dataclasses.dataclass
class Measure:
    status: int | None  # exit status (negative: killed by that signal); None: no result
    wall: float
    utime: float = 0.0
    stime: float = 0.0
    maxrss_kib: int = 0
    timed_out: bool = False


def timed_run(argv: list[str], env: dict, log: Path, result: Path, timeout: float) -> Measure:
    """Run argv under the launcher, its stdout and stderr going to `log`."""
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        kill_current()

    result.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), *argv]
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(launcher, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                             start_new_session=True)
        _current["proc"] = p
        timer = threading.Timer(timeout, on_timeout)
        timer.start()
        try:
            p.wait()
        except BaseException:  # Ctrl-C or SIGTERM: the tool must not outlive us
            kill_current()
            p.wait()
            raise
        finally:
            timer.cancel()
            _current["proc"] = None
        wall = time.perf_counter() - t0
    try:
        m = json.loads(result.read_text())
        return Measure(m["status"], m["wall"], m["utime"], m["stime"], m["maxrss_kib"],
                       timed_out.is_set())
    except (OSError, ValueError, KeyError):
        return Measure(None, wall, timed_out=timed_out.is_set())


def verify(out: Path, files: list[DataFile]) -> str | None:
    """None when every expected file is in `out` with the right sha256, else why not."""
    bad = []
    for df in files:
        name = os.path.basename(df.rel)
        path = out / name
        if not path.is_file():
            bad.append(f"{name}: missing")
        elif path.stat().st_size != df.size:
            bad.append(f"{name}: size {path.stat().st_size} != {df.size}")
        elif sha256_file(path) != df.sha256:
            bad.append(f"{name}: sha256 mismatch")
        if len(bad) >= 3:
            break
    if not bad:
        return None
    more = "" if len(bad) < 3 else " ..."
    return "; ".join(bad) + more


def clean_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def tool_env() -> dict:
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"):
            del env[k]
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def spread(s: dict, what: str) -> str:
    """"min / median / max" of the wall or CPU seconds of a row's successful runs."""
    if f"median_{what}_s" not in s:
        return "—"
    return " / ".join(fmt(s[f"{k}_{what}_s"]) for k in ("min", "median", "max"))


def summarize(sc: Scenario, rows: list[str], results: list[RunResult]) -> dict:
    summary = {}
    for row in rows:
        rs = [r for r in results if r.row == row]
        ok = [r for r in rs if r.ok]
        s = {"runs": len(rs), "ok": len(ok), "errors": sorted({r.error for r in rs if r.error})}
        if ok:
            s["min_wall_s"] = min(r.wall_s for r in ok)
            s["median_wall_s"] = statistics.median(r.wall_s for r in ok)
            s["max_wall_s"] = max(r.wall_s for r in ok)
            s["min_cpu_s"] = min(r.cpu_s for r in ok)
            s["median_cpu_s"] = statistics.median(r.cpu_s for r in ok)
            s["max_cpu_s"] = max(r.cpu_s for r in ok)
            s["cpu_s_per_gib"] = s["median_cpu_s"] / (sc.total_bytes / GiB)
            s["mib_per_s"] = sc.total_bytes / MiB / s["median_wall_s"]
            s["peak_rss_mib"] = max(r.maxrss_kib for r in ok) / 1024
        summary[row] = s
    dl = {r.round: r for r in results if r.row == "dlman" and r.ok}
    for row in rows:
        if row == "dlman":
            continue
        pairs = [(dl[r.round], r) for r in results if r.row == row and r.ok and r.round in dl]
        if pairs:
            summary[row]["dlman_wall_ratio"] = statistics.median(a.wall_s / b.wall_s
                                                                  for a, b in pairs)
            cpu = [a.cpu_s / b.cpu_s for a, b in pairs if b.cpu_s > 0]
            summary[row]["dlman_cpu_ratio"] = statistics.median(cpu) if cpu else None
    return summary


def render_table(sc: Scenario, rows: list[str], summary: dict, notes: list[str]) -> str:
    n_files = len(sc.files)
    size = human_size(sc.total_bytes)
    if n_files > 1:
        size += f" in {n_files} files of {human_size(sc.files[0].size)}"
    lines = [f"### Scenario {sc.number}: {sc.title} ({size})", ""]
    lines += [f"_{n}_" for n in notes]
    if notes:
        lines.append("")
    lines.append("| tool | status | wall s min / median / max | MiB/s | CPU s min / median / max "
                 "| CPU s/GiB | peak RSS MiB | dlman/tool wall | dlman/tool CPU |")
    lines.append("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        s = summary[row]
        status = "ok" if s["ok"] == s["runs"] else f"FAILED {s['runs'] - s['ok']}/{s['runs']}"
        if row == "dlman" or "dlman_wall_ratio" not in s:
            rw = rc = "—"
        else:
            rw = f"dlman/{row} {s['dlman_wall_ratio']:.2f}x"
            rc = "—" if s.get("dlman_cpu_ratio") is None else \
                f"dlman/{row} {s['dlman_cpu_ratio']:.2f}x"
        lines.append(f"| {row} | {status} | {spread(s, 'wall')} "
                     f"| {fmt(s.get('mib_per_s'), 1)} | {spread(s, 'cpu')} "
                     f"| {fmt(s.get('cpu_s_per_gib'))} | {fmt(s.get('peak_rss_mib'), 1)} "
                     f"| {rw} | {rc} |")
    failures = [(row, e) for row in rows for e in summary[row]["errors"]]
    if failures:
        lines.append("")
        lines += [f"- {row}: {e}" for row, e in failures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=HELP_DESCRIPTION,
                                epilog=HELP_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="1,2,3,4,5,6", metavar="LIST",
                   help="comma-separated scenario numbers (default: 1,2,3,4,5,6; those that "
                        "cannot run here are skipped with a note)")
    p.add_argument("--runs", type=int, default=5, metavar="N",
                   help="timed runs per tool and scenario (default: 5)")
    p.add_argument("--size-scale", type=float, default=1.0, metavar="F",
                   help="multiply every file size by F, e.g. 0.05 for a quick smoke run "
                        "(default: 1)")
    p.add_argument("--tools", default="dlman,curl,aria2c,axel", metavar="LIST",
                   help="comma-separated tools (default: dlman,curl,aria2c,axel)")
    p.add_argument("--dlman", metavar="CMD",
                   help="command that starts dlman, split on spaces (default: the `dlman` "
                        "script beside this Python, else `python -m dlman`, else PATH)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=CMD",
                   help="another dlman to run beside the first, e.g. old=/path/to/old/dlman "
                        "(repeatable): its rows are labelled LABEL, interleaved with the others and "
                        "compared with dlman like the other tools")
    p.add_argument("--json", metavar="FILE", help="save every raw measurement to FILE")
    p.add_argument("--workdir", metavar="DIR",
                   help="work directory, kept afterwards so the data is reused by the next "
                        "invocation (default: a new temporary directory, removed at the end)")
    p.add_argument("--out-dir", metavar="DIR",
                   help="where the tools write their outputs (default: WORKDIR/out)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary work directory (nginx config and logs, data)")
    p.add_argument("--timeout", type=float, default=900, metavar="S",
                   help="kill a run after S seconds and mark it FAILED (default: 900)")
    p.add_argument("--no-install", action="store_true",
                   help="never run apt-get; skip what is missing")
    a = p.parse_args(argv)
    try:
        a.scenarios = sorted({int(x) for x in a.scenario.split(",") if x.strip()})
    except ValueError:
        p.error("--scenario takes numbers such as 1,2,4")
    if not a.scenarios or any(n not in range(1, 7) for n in a.scenarios):
        p.error("--scenario: choose among 1,2,3,4,5,6")
    a.compare_cmds = {}
    for item in a.compare:
        label, sep, command = item.partition("=")
        if not sep or not label or not command.split() or label in COMMANDS or label in a.compare_cmds:
            p.error(f"--compare {item!r}: give LABEL=CMD with a new label, e.g. old=/path/to/old/dlman")
        a.compare_cmds[label] = command.split()
    a.tool_list = [t.strip() for t in a.tools.split(",") if t.strip()]
    unknown = [t for t in a.tool_list if t not in COMMANDS]
    if unknown or not a.tool_list:
        p.error(f"--tools: unknown {', '.join(unknown)}; choose among {', '.join(COMMANDS)}")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if not 0 < a.size_scale <= 16:
        p.error("--size-scale must be in (0, 16]")
    return a


def find_dlman(override: str | None) -> list[str] | None:
    if override:
        return override.split()
    beside = Path(sys.executable).parent / "dlman"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if importlib.util.find_spec("dlman") is not None:
        return [sys.executable, "-m", "dlman"]
    found = shutil.which("dlman")
    return [found] if found else None


def tool_version(tool: str, dlman_cmd: list[str] | None) -> str:
    if tool == "dlman":
        return first_line([*dlman_cmd, "--version"]) if dlman_cmd else "?"
    return first_line([tool, "--version"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    allow_install = not args.no_install

    # nginx first: nothing works without it.
    if not ensure_binary("nginx", "nginx", allow_install):
        note("nginx is required but not installed.\n"
             "  Debian/Ubuntu: sudo apt-get install nginx   (or run this script as root: it "
             "installs it)\n  Fedora: sudo dnf install nginx   macOS: brew install nginx")
        return 2

    dlman_cmd = find_dlman(args.dlman)
    tools: list[str] = []
    for tool in args.tool_list:
        if tool == "dlman":
            if dlman_cmd:
                tools.append(tool)
            else:
                note("note: dlman not found (pip install . in this environment); skipped")
        elif ensure_binary(tool, APT_PACKAGE[tool], allow_install):
            tools.append(tool)
        else:
            note(f"note: {tool} is not installed and could not be installed "
                 f"(apt-get install {APT_PACKAGE[tool]}); skipped")
    if not tools:
        note("no tool to benchmark")
        return 2

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)

    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="dlman-bench-") if temporary else args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    nginx: Nginx | None = None
    netns: NetNS | None = None
    all_results: list[RunResult] = []
    report: dict = {"scenarios": {}}
    status = 0
    try:
        os.chmod(work, 0o755)
        data_root = work / "data"
        data_root.mkdir(exist_ok=True)
        os.chmod(data_root, 0o755)
        out_root = Path(args.out_dir).resolve() if args.out_dir else work / "out"
        out_root.mkdir(parents=True, exist_ok=True)
        home = work / "dlman-home"
        scale = args.size_scale

        def scaled(n: int) -> int:
            return max(1024, int(n * scale))

        skip_notes: dict[int, str] = {}
        tls = None
        if {4, 6} & set(args.scenarios):
            tls = make_certificate(work / "tls")
            if tls is None:
                skip_notes[4] = skip_notes[6] = "no `openssl` command and no `trustme` package"
        if 5 in args.scenarios:
            netns = NetNS()
            why = netns.setup()
            if why:
                skip_notes[5] = why
                netns = None

        # Data, generated once (and reused from --workdir by later invocations).
        big = mid = None
        small: list[DataFile] = []
        wanted = set(args.scenarios) - set(skip_notes)
        note(f"work directory: {work}")
        if wanted & {1, 4, 6}:
            big_size = scaled(GiB)
            note(f"data: {human_size(big_size)} ...")
            big = make_file(data_root, f"big-{big_size}.bin", big_size)
        if wanted & {2, 5}:
            mid_size = scaled(256 * MiB)
            note(f"data: {human_size(mid_size)} ...")
            mid = make_file(data_root, f"mid-{mid_size}.bin", mid_size)
        if 3 in wanted:
            sz = scaled(256 * KiB)
            note(f"data: 500 files of {human_size(sz)} ...")
            small = [make_file(data_root, f"small-{sz}/f{i:03d}.bin", sz) for i in range(500)]
            os.chmod(data_root / f"small-{sz}", 0o755)

        http_port = free_port()
        https_port = h2_port = http_port
        while https_port == http_port:
            https_port = free_port()
        while h2_port in (http_port, https_port):
            h2_port = free_port()
        nginx = Nginx(work, data_root, http_port, https_port, h2_port, tls,
                      netns.host_ip if netns else None)
        nginx.start()
        note(f"{first_line(['nginx', '-v'])}, pid {nginx.proc.pid}: "
             f"http://127.0.0.1:{http_port}/  https://127.0.0.1:{https_port}/  "
             f"HTTP/2: https://127.0.0.1:{h2_port}/")
        if netns:
            rtt = netns.measure_rtt(http_port)
            if rtt is None:
                skip_notes[5] = "the namespace cannot reach nginx"
            else:
                note(f"netns {netns.name}: TCP connect to {netns.host_ip} took {rtt:.1f} ms")

        scenarios = {
            1: Scenario(1, "plain HTTP/1.1, unthrottled", "single", "data",
                        files=[big] if big else []),
            2: Scenario(2, "nginx limit_rate 8m per connection", "single", "throttled",
                        files=[mid] if mid else []),
            3: Scenario(3, "many small files through a manifest", "many", "data",
                        files=small),
            4: Scenario(4, "HTTPS, self-signed certificate", "single", "data",
                        https=True, files=[big] if big else []),
            5: Scenario(5, "limit_rate 8m per connection, 40 ms RTT (netns + netem)",
                        "single", "throttled", netns=True, files=[mid] if mid else []),
            6: Scenario(6, "HTTP/2 over TLS, self-signed certificate", "single", "data",
                        https=True, http2=True, files=[big] if big else []),
        }

        env = tool_env()
        versions = {t: tool_version(t, dlman_cmd) for t in tools}
        compare = args.compare_cmds if "dlman" in tools else {}
        versions.update({label: tool_version("dlman", cmd) for label, cmd in compare.items()})
        versions["nginx"] = first_line(["nginx", "-v"])
        report.update({
            "argv": sys.argv, "size_scale": scale, "runs": args.runs, "tools": tools,
            "versions": versions, "dlman_command": dlman_cmd, "python": sys.version,
            "platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "connections": CONNECTIONS, "skipped": {str(k): v for k, v in skip_notes.items()},
        })
        print(f"# dlman benchmark\n\n{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}, "
              f"{args.runs} run(s) per tool, size scale {scale:g}, {CONNECTIONS} connections.\n")
        for t in [*tools, *compare]:
            print(f"- {t}: {versions[t]}")
        print(f"- nginx: {versions['nginx']}\n", flush=True)

        reported_stderr: set[tuple[int, str]] = set()
        for number in args.scenarios:
            if number in skip_notes:
                print(f"### Scenario {number}: skipped ({skip_notes[number]})\n", flush=True)
                continue
            sc = scenarios[number]
            if sc.http2:
                base = f"https://127.0.0.1:{h2_port}/{sc.location}/"
            elif sc.https:
                base = f"https://127.0.0.1:{https_port}/{sc.location}/"
            elif sc.netns:
                base = f"http://{netns.host_ip}:{http_port}/{sc.location}/"
            else:
                base = f"http://127.0.0.1:{http_port}/{sc.location}/"
            urls = [(base + df.rel, os.path.basename(df.rel)) for df in sc.files]

            # One row per (tool, variant); a tool without a builder for this kind is skipped.
            rows: list[tuple[str, Callable]] = []
            notes: list[str] = []
            for t in tools:
                spec = COMMANDS[t]["single"] if sc.kind == "single" else COMMANDS[t]["many"]
                probe = COMMANDS[t].get("https_probe")
                if sc.https and probe and probe[1] not in first_line_all(probe[0]):
                    notes.append(f"{t}: skipped (no option to accept a self-signed certificate)")
                    continue
                if sc.http2 and not COMMANDS[t].get("http2", True):
                    notes.append(f"{t}: skipped (no HTTP/2)")
                    continue
                if sc.kind == "single":
                    rows.append((t, spec))
                elif spec:
                    rows.extend(spec.items())
                else:
                    notes.append(f"{t}: skipped (no manifest / input-file mode)")
            if "dlman" in [label for label, _ in rows]:
                build_dlman = (COMMANDS["dlman"]["single"] if sc.kind == "single"
                               else COMMANDS["dlman"]["many"]["dlman"])
                rows.extend((label, build_dlman) for label in compare)
            if sc.netns and netns.rtt_ms is not None:
                notes.append(f"measured TCP connect time in the namespace: "
                             f"{netns.rtt_ms:.1f} ms")
            if not rows:
                print(f"### Scenario {number}: skipped (no tool for it)\n", flush=True)
                continue

            manifest = work / f"manifest-{number}.txt"
            with open(manifest, "w", encoding="utf-8") as f:
                f.write("# generated by scripts/bench.py (SPEC / aria2 input-file format)\n")
                for url, name in urls:
                    f.write(f"{url}\n  out={name}\n")

            warm_cache(data_root, sc.files)
            results: list[RunResult] = []
            for rnd in range(args.runs):
                order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
                for pos, (label, build) in enumerate(order):
                    out = out_root / label
                    clean_dir(out)
                    if label == "dlman" or label in compare:
                        shutil.rmtree(home, ignore_errors=True)
                    job = Job(url=urls[0][0], name=urls[0][1], out=str(out), https=sc.https, http2=sc.http2,
                              manifest=str(manifest), home=str(home),
                              dlman=compare.get(label) or dlman_cmd or [],
                              workdir=str(work), _urls=urls)
                    cmd = build(job)
                    if sc.netns:
                        cmd = netns.wrap(cmd)
                    os.sync()  # earlier runs' dirty pages are not this run's problem
                    log = work / f"log-s{number}-{label}.txt"
                    m = timed_run(cmd, env, log, work / "last-run.json", args.timeout)
                    if m.timed_out:
                        error = f"timed out after {args.timeout:g} s"
                    elif m.status is None:
                        error = "the launcher reported nothing"
                    elif m.status != 0:
                        error = f"exit status {m.status}"
                    else:
                        error = verify(out, sc.files)
                    if error and (number, label) not in reported_stderr:
                        reported_stderr.add((number, label))
                        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
                        note(f"  {label} FAILED in scenario {number}: {error}\n"
                             f"    command: {' '.join(cmd)}\n" +
                             "".join(f"    | {line}\n" for line in tail))
                    r = RunResult(number, label, rnd, pos, cmd, error is None, error, m.status,
                                  m.wall, m.utime, m.stime, m.maxrss_kib, sc.total_bytes)
                    results.append(r)
                    all_results.append(r)
                    note(f"[scenario {number} run {rnd + 1}/{args.runs}] {label:<11} "
                         f"{'ok' if r.ok else 'FAILED'} wall {r.wall_s:7.2f} s  "
                         f"cpu {r.cpu_s:6.2f} s  rss {r.maxrss_kib / 1024:6.1f} MiB")
                    shutil.rmtree(out, ignore_errors=True)
            labels = [label for label, _ in rows]
            summary = summarize(sc, labels, results)
            if any(s["ok"] < s["runs"] for s in summary.values()):
                status = 1
            report["scenarios"][str(number)] = {"title": sc.title, "bytes": sc.total_bytes,
                                                "files": len(sc.files), "summary": summary}
            print(render_table(sc, labels, summary, notes), flush=True)
    except KeyboardInterrupt:
        note("interrupted (Ctrl-C); cleaning up")
        status = 130
    except Interrupted as e:
        note(f"interrupted ({e}); cleaning up")
        status = 128 + e.signum
    finally:
        # Cleanup must not be cut short by a second signal.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        kill_current()
        if nginx:
            nginx.stop()
        if netns:
            netns.cleanup()
        if args.json:
            report["runs_raw"] = [dict(dataclasses.asdict(r), cpu_s=r.cpu_s)
                                  for r in all_results]
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            note(f"raw results saved to {args.json}")
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "out", ignore_errors=True)
            note(f"work directory kept: {work}")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    return status


if __name__ == "__main__":
    sys.exit(main())
