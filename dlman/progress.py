"""What the user sees while jobs run: tqdm bars on a terminal, else one line per job that ends,
or JSON lines for programs that follow dlman (``--progress json``).

The runner reports to a listener (``started`` / ``progress`` / ``ended``); the
displays here are the CLI's listeners. Nothing else in dlman prints.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from dlman.options import mask_url, redact

if TYPE_CHECKING:
    from tqdm import tqdm

    from dlman.result import Progress
    from dlman.queue import Job, Outcome

MODES = ("auto", "bar", "lines", "json", "none")

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: float | None) -> str:
    """``1.5 MiB``: IEC units (1024 multiples, as the rate options count), in every line and bar."""
    if size is None:
        return "?"
    if abs(size) < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in _UNITS[1:]:
        value /= 1024
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_rate(rate: float | None) -> str:
    """``2.5 MiB/s``; ``? B/s`` before there is anything to measure."""
    return f"{human_size(rate)}/s" if rate else "? B/s"


def describe(outcome: "Outcome") -> str | None:
    """The line for a job that ended, or None when there is nothing to say."""
    if outcome.state == "done":
        note = ", already complete" if outcome.skipped else ""
        return f"done {outcome.path} ({human_size(outcome.size)}{note})"
    if outcome.state == "failed":
        url, error = mask_url(outcome.url), outcome.error or "unknown error"
        return f"failed {error}" if error.startswith(url) else f"failed {url}: {error}"
    if outcome.state in ("paused", "removed"):
        return f"{outcome.state} job {outcome.job_id} ({mask_url(outcome.url)})" if outcome.url else None
    return None


class LineDisplay:
    """No bars: one line per job that ends; with ``quiet``, failures only."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def started(self, job: "Job") -> None:
        pass

    def progress(self, job: "Job", progress: "Progress") -> None:
        pass

    def ended(self, outcome: "Outcome") -> None:
        line = describe(outcome)
        if line and (not self.quiet or outcome.state == "failed"):
            self.write(line)

    def close(self) -> None:
        pass


_WITH_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {n_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}]"
_WITHOUT_TOTAL = "{desc}: {n_iec} [{elapsed}, {rate_iec}]"
_MARGIN = 2
"""Columns left free at the right. A line as wide as the terminal leaves the cursor waiting to wrap,
and the ``^C`` a terminal echoes on Ctrl-C would then start a new line that tqdm does not know of."""
_PARK = "\r\x1b[J"
"""Column 0 of the first bar line, everything from there down erased: where the next line belongs."""


def _bar_class() -> Any:
    """``_Bar``, made on first use: tqdm is imported only when bars are drawn."""
    global _Bar
    if _Bar is None:
        from tqdm import tqdm

        class Bar(tqdm):  # type: ignore[misc, type-arg, unused-ignore]
            """A tqdm bar in IEC units: tqdm's ``unit_scale`` prints ``M`` and ``MB/s`` even for 1024 multiples."""

            @property
            def format_dict(self) -> dict:  # type: ignore[type-arg]
                fields = dict(super().format_dict)
                n, total, elapsed, rate = fields["n"], fields["total"], fields["elapsed"], fields["rate"]
                if rate is None and elapsed:  # as tqdm does before its smoothed rate exists
                    rate = (n - fields["initial"]) / elapsed
                fields.update(bar_format=_WITH_TOTAL if total else _WITHOUT_TOTAL, n_iec=human_size(n),
                              total_iec=human_size(total), rate_iec=human_rate(rate))
                if fields["ncols"]:
                    fields["ncols"] = max(1, fields["ncols"] - _MARGIN)
                return fields

        _Bar = Bar
    return _Bar


_Bar: Any = None


class BarDisplay(LineDisplay):
    """One tqdm bar per active download (bytes, rate, ETA), plus a total bar when several run.

    tqdm moves back up to its first bar line after drawing one below without returning to column 0,
    so once the last bar is gone the cursor is parked (:data:`_PARK`) for whatever is printed next.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.bars: dict[int, tqdm[Any]] = {}
        self.seen: dict[int, tuple[int, int | None]] = {}  # id -> (downloaded, total)
        self.total_bar: tqdm[Any] | None = None
        self.drawn = False  # whether a bar was ever shown, so parking has something to tidy

    def write(self, line: str) -> None:
        _bar_class().write(line, file=self.stream)

    def _new_bar(self, desc: str, total: int | None, initial: int) -> tqdm[Any]:
        self.drawn = True
        bar: tqdm[Any] = _bar_class()(total=total, initial=initial, desc=desc, unit="B", file=self.stream,
                                      leave=False, dynamic_ncols=True)
        return bar

    def _bar(self, job: "Job", progress: "Progress") -> tqdm[Any]:
        bar = self.bars.get(job.id)
        if bar is None:
            name = progress.path.name if progress.path else mask_url(job.url).rsplit("/", 1)[-1]
            bar = self.bars[job.id] = self._new_bar(name[:30], progress.total, progress.downloaded)
        return bar

    def progress(self, job: "Job", progress: "Progress") -> None:
        bar = self._bar(job, progress)
        if progress.total is not None and bar.total != progress.total:
            bar.total = progress.total
        bar.update(progress.downloaded - bar.n)
        self.seen[job.id] = (progress.downloaded, progress.total)
        self._update_total()

    def _update_total(self) -> None:
        if len(self.seen) < 2:
            return
        done = sum(d for d, _ in self.seen.values())
        totals = [t for _, t in self.seen.values()]
        total = None if None in totals else sum(t for t in totals if t is not None)
        if self.total_bar is None:
            self.total_bar = self._new_bar("total", total, done)
        elif self.total_bar.total != total:
            self.total_bar.total = total
        self.total_bar.update(done - self.total_bar.n)

    def ended(self, outcome: "Outcome") -> None:
        bar = self.bars.pop(outcome.job_id, None)
        if bar is not None:
            bar.close()
            self._park()
        super().ended(outcome)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        if self.total_bar is not None:
            self.total_bar.close()
            self.total_bar = None
        self._park()

    def _park(self) -> None:
        if self.drawn and not self.bars and self.total_bar is None:
            self.stream.write(_PARK)
            self.stream.flush()
            self.drawn = False


class Speed:
    """Bytes per second over the last few seconds, from (time, bytes done) samples (pure)."""

    WINDOW = 5.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, done: int) -> float | None:
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # started over
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        first_time, first_done = self.samples[0]
        return (done - first_done) / (now - first_time) if now > first_time else None


def eta(done: int, total: int | None, speed: float | None) -> float | None:
    """Seconds left at ``speed``; None when it cannot be told."""
    if total is None or not speed or speed <= 0:
        return None
    return max(0.0, (total - done) / speed)


def _emit(stream: TextIO, event: dict[str, Any]) -> None:
    stream.write(json.dumps(event, separators=(",", ":")) + "\n")
    stream.flush()


class JsonDisplay:
    """``--progress json``: one JSON object per line, for programs that follow dlman.

    ``progress`` lines (at most one per job every ``interval`` seconds) and one ``end`` line
    per job that ends; log records become ``log`` lines, so every line parses.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.clock = clock
        self.speeds: dict[int, Speed] = {}
        self.last: dict[int, float] = {}

    def write(self, line: str) -> None:
        _emit(self.stream, {"event": "message", "message": line})

    def started(self, job: "Job") -> None:
        pass

    def progress(self, job: "Job", progress: "Progress") -> None:
        now = self.clock()
        speed = self.speeds.setdefault(job.id, Speed()).update(now, progress.downloaded)
        if now - self.last.get(job.id, -self.interval) < self.interval:
            return
        self.last[job.id] = now
        _emit(self.stream, {
            "event": "progress", "id": job.id, "state": "active",
            "path": str(progress.path) if progress.path else None, "url": mask_url(job.url),
            "bytes_done": progress.downloaded, "total": progress.total,
            "speed": None if speed is None else round(speed), "eta": _rounded(eta(progress.downloaded,
                                                                                   progress.total, speed)),
            "connections": progress.connections,
        })

    def ended(self, outcome: "Outcome") -> None:
        self.speeds.pop(outcome.job_id, None)
        self.last.pop(outcome.job_id, None)
        _emit(self.stream, {
            "event": "end", "id": outcome.job_id, "state": outcome.state, "path": outcome.path,
            "url": mask_url(outcome.url), "size": outcome.size, "skipped": outcome.skipped,
            "error": None if outcome.error is None else redact(outcome.error), "digest": outcome.digest,
            "digest_source": outcome.digest_source,
        })

    def close(self) -> None:
        pass


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


Display = LineDisplay | JsonDisplay


def make_display(mode: str = "auto", quiet: bool = False, stream: TextIO | None = None) -> Display:
    """The display for ``--progress MODE``: ``auto`` is bars while the stream is a terminal (and not
    quiet), else lines. ``none`` shows only failures; ``-q`` quiets bars and lines but not json,
    which a program asked for."""
    stream = stream or sys.stderr
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}")
    if mode == "json":
        return JsonDisplay(stream)
    if mode == "auto":
        mode = "bar" if stream.isatty() else "lines"
    if mode == "bar" and not quiet:
        return BarDisplay(stream)
    return LineDisplay(stream, quiet=quiet or mode == "none")


class _TqdmHandler(logging.Handler):
    """Log records written above the bars instead of through them (to stderr as it is at the time).

    Everything written is redacted, tracebacks included, and httpx's own request lines with -vv.
    Bars exist only once tqdm is loaded; until then a plain write does.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line, stream = redact(self.format(record)), self.stream or sys.stderr
            if _Bar is not None:
                _Bar.write(line, file=stream)
            else:
                stream.write(line + "\n")
                stream.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _BriefFormatter(logging.Formatter):
    """``warning: message``, without tracebacks (those are for ``-v``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _JsonFormatter(logging.Formatter):
    """A ``log`` line of ``--progress json`` (a traceback, with -v, goes in ``traceback``)."""

    def format(self, record: logging.LogRecord) -> str:
        event = {"event": "log", "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            event["traceback"] = self.formatException(record.exc_info)
        return json.dumps(event, separators=(",", ":"))


def setup_logging(verbose: int = 0, quiet: bool = False, stream: TextIO | None = None, *,
                  as_json: bool = False) -> None:
    """Route the "dlman" logger to stderr: warnings (errors with -q), INFO with -v, DEBUG and httpx with -vv.

    Without -v only the handler filters, so an embedding program's own logging
    configuration of the "dlman" logger is left alone. ``as_json``: one JSON object per record.
    """
    handler = _TqdmHandler(stream)
    if as_json:
        handler.setFormatter(_JsonFormatter())
        if not verbose:
            handler.setLevel(logging.ERROR if quiet else logging.WARNING)
    elif verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    else:
        handler.setFormatter(_BriefFormatter())
        handler.setLevel(logging.ERROR if quiet else logging.WARNING)
    for name in ("dlman",) + (("httpx", "httpcore") if verbose > 1 else ()):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _TqdmHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        if verbose:
            logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
