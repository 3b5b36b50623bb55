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


class _Bar(tqdm):
    """A tqdm bar in IEC units: tqdm's ``unit_scale`` prints ``M`` and ``MB/s`` even for 1024 multiples."""

    @property
    def format_dict(self) -> dict:
        fields = dict(super().format_dict)
        n, total, elapsed, rate = fields["n"], fields["total"], fields["elapsed"], fields["rate"]
        if rate is None and elapsed:  # as tqdm does before its smoothed rate exists
            rate = (n - fields["initial"]) / elapsed
        fields.update(bar_format=_WITH_TOTAL if total else _WITHOUT_TOTAL, n_iec=human_size(n),
                      total_iec=human_size(total), rate_iec=human_rate(rate))
        if fields["ncols"]:
            fields["ncols"] = max(1, fields["ncols"] - _MARGIN)
        return fields


class BarDisplay(LineDisplay):
    """One tqdm bar per active download (bytes, rate, ETA), plus a total bar when several run.

    tqdm moves back up to its first bar line after drawing one below without returning to column 0,
    so once the last bar is gone the cursor is parked (:data:`_PARK`) for whatever is printed next.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.bars: dict[int, tqdm] = {}
        self.seen: dict[int, tuple[int, int | None]] = {}  # id -> (downloaded, total)
        self.total_bar: tqdm | None = None
        self.drawn = False  # whether a bar was ever shown, so parking has something to tidy

    def write(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def _new_bar(self, desc: str, total: int | None, initial: int) -> tqdm:
        self.drawn = True
        return _Bar(total=total, initial=initial, desc=desc, unit="B", file=self.stream, leave=False,
                    dynamic_ncols=True)

    def _bar(self, job: "Job", progress: "Progress") -> tqdm:
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


def make_display(quiet: bool = False, stream: TextIO | None = None) -> LineDisplay:
    """Bars while the stream is a terminal (and not quiet), else lines."""
    stream = stream or sys.stderr
    if not quiet and stream.isatty():
        return BarDisplay(stream)
    return LineDisplay(stream, quiet=quiet)


class _TqdmHandler(logging.Handler):
    """Log records written above the bars instead of through them (to stderr as it is at the time).

    Everything written is redacted, tracebacks included, and httpx's own request lines with -vv.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(redact(self.format(record)), file=self.stream or sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _BriefFormatter(logging.Formatter):
    """``warning: message``, without tracebacks (those are for ``-v``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: int = 0, quiet: bool = False, stream: TextIO | None = None) -> None:
    """Route the "dlman" logger to stderr: warnings (errors with -q), INFO with -v, DEBUG and httpx with -vv.

    Without -v only the handler filters, so an embedding program's own logging
    configuration of the "dlman" logger is left alone.
    """
    handler = _TqdmHandler(stream)
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
