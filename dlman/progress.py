"""What the user sees while jobs run: tqdm bars on a terminal, else one line per job that ends.

The runner reports to a listener (``started`` / ``progress`` / ``ended``); the
displays here are the CLI's listeners. Nothing else in dlman prints.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from dlman.options import mask_url, redact

if TYPE_CHECKING:
    from dlman.result import Progress
    from dlman.queue import Job, Outcome

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: int | None) -> str:
    """``1.5 MiB``: sizes in the 1024 units the rate options use."""
    if size is None:
        return "?"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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


class BarDisplay(LineDisplay):
    """One tqdm bar per active download (bytes, rate, ETA), plus a total bar when several run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.bars: dict[int, tqdm] = {}
        self.seen: dict[int, tuple[int, int | None]] = {}  # id -> (downloaded, total)
        self.total_bar: tqdm | None = None

    def write(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def _bar(self, job: "Job", progress: "Progress") -> tqdm:
        bar = self.bars.get(job.id)
        if bar is None:
            name = progress.path.name if progress.path else mask_url(job.url).rsplit("/", 1)[-1]
            bar = tqdm(total=progress.total, initial=progress.downloaded, desc=name[:30], unit="B",
                       unit_scale=True, unit_divisor=1024, file=self.stream, leave=False, dynamic_ncols=True)
            self.bars[job.id] = bar
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
            self.total_bar = tqdm(total=total, initial=done, desc="total", unit="B", unit_scale=True,
                                  unit_divisor=1024, file=self.stream, leave=False, dynamic_ncols=True)
        elif self.total_bar.total != total:
            self.total_bar.total = total
        self.total_bar.update(done - self.total_bar.n)

    def ended(self, outcome: "Outcome") -> None:
        bar = self.bars.pop(outcome.job_id, None)
        if bar is not None:
            bar.close()
        super().ended(outcome)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        if self.total_bar is not None:
            self.total_bar.close()


def make_display(quiet: bool = False, stream: TextIO | None = None) -> LineDisplay:
    """Bars while the stream is a terminal (and not quiet), else lines."""
    stream = stream or sys.stderr
    if not quiet and stream.isatty():
        return BarDisplay(stream)
    return LineDisplay(stream, quiet=quiet)


class _TqdmHandler(logging.Handler):
    """Log records written above the bars instead of through them (to stderr as it is at the time)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _BriefFormatter(logging.Formatter):
    """``warning: message``, without tracebacks (those are for ``-v``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _redact_record(record: logging.LogRecord) -> bool:
    """Mask URL credentials in every line we print, including httpx's own request logs."""
    message = record.getMessage()
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    return True


def setup_logging(verbose: int = 0, quiet: bool = False, stream: TextIO | None = None) -> None:
    """Route the "dlman" logger to stderr: warnings (errors with -q), INFO with -v, DEBUG and httpx with -vv.

    Without -v only the handler filters, so an embedding program's own logging
    configuration of the "dlman" logger is left alone.
    """
    handler = _TqdmHandler(stream)
    handler.addFilter(_redact_record)
    if verbose:
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
