"""What a terminal shows once dlman has drawn its bars.

dlman runs in a real pseudo-terminal with a fixed window size; the bytes it writes are replayed on a
small screen model (below) that understands the few sequences tqdm and dlman use. After one or several
files, and after Ctrl-C, the screen must hold only the final lines and the cursor must wait at column 0
of a fresh line below them, where the shell's next prompt goes. Sizes and speeds are IEC everywhere.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dlman.progress import BarDisplay, human_rate, human_size
from dlman.queue import Job, Outcome
from dlman.result import Progress

ROWS, COLS = 24, 100
_CSI = re.compile(r"\x1b\[([0-9;?]*)([\x40-\x7e])")
_CSI_START = re.compile(r"\x1b(\[[0-9;?]*)?")


# -- a screen ------------------------------------------------------------------------------------

class Screen:
    """A VT100-style screen: printable text with deferred autowrap, CR, LF (scrolling at the bottom),
    BS, TAB, and the CSI sequences for cursor moves and erasing. Any other escape sequence is an error,
    so a test cannot pass on output this model does not understand."""

    def __init__(self, rows: int = ROWS, cols: int = COLS) -> None:
        self.rows, self.cols = rows, cols
        self.cells = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.wrap_next = False  # the last column was just written: the next character wraps first
        self.pending = ""

    def feed(self, text: str) -> "Screen":
        text, self.pending = self.pending + text, ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                match = _CSI.match(text, i)
                if match is None:
                    if _CSI_START.fullmatch(text, i):  # cut in the middle: the rest comes with the next read
                        self.pending = text[i:]
                        return self
                    raise AssertionError(f"unsupported escape sequence {text[i:i + 8]!r}")
                self._csi(match.group(1), match.group(2))
                i = match.end()
                continue
            if ch < " " or ch == "\x7f":
                self._control(ch)
            else:
                self._print(ch)
            i += 1
        return self

    def _print(self, ch: str) -> None:
        if self.wrap_next:
            self.col = 0
            self._line_feed()
        self.cells[self.row][self.col] = ch
        if self.col == self.cols - 1:
            self.wrap_next = True
        else:
            self.col += 1

    def _line_feed(self) -> None:
        self.wrap_next = False
        if self.row == self.rows - 1:
            self.cells = self.cells[1:] + [[" "] * self.cols]
        else:
            self.row += 1

    def _control(self, ch: str) -> None:
        if ch == "\r":
            self.col, self.wrap_next = 0, False
        elif ch == "\n":
            self._line_feed()
        elif ch == "\b":
            self.col, self.wrap_next = max(0, self.col - 1), False
        elif ch == "\t":
            self.col, self.wrap_next = min(self.cols - 1, (self.col // 8 + 1) * 8), False
        elif ch != "\x07":
            raise AssertionError(f"unsupported control character {ch!r}")

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):
            raise AssertionError(f"unsupported private sequence \\x1b[{params}{final}")
        args = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = max(1, args[0]) if args else 1
        self.wrap_next = False
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row = min(self.rows - 1, self.row + n)
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = min(self.cols - 1, n - 1)
        elif final in "Hf":
            row, col = (args + [1, 1])[:2]
            self.row, self.col = min(self.rows, max(1, row)) - 1, min(self.cols, max(1, col)) - 1
        elif final == "K":
            mode = args[0] if args else 0
            start, end = {0: (self.col, self.cols), 1: (0, self.col + 1), 2: (0, self.cols)}[mode]
            self.cells[self.row][start:end] = [" "] * (end - start)
        elif final == "J":
            mode = args[0] if args else 0
            if mode == 0:
                self._csi("", "K")
                rows = range(self.row + 1, self.rows)
            elif mode == 1:
                self._csi("1", "K")
                rows = range(0, self.row)
            else:
                rows = range(self.rows)
            for r in rows:
                self.cells[r] = [" "] * self.cols
        else:
            raise AssertionError(f"unsupported sequence \\x1b[{params}{final}")

    @property
    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.cells]

    @property
    def text(self) -> list[str]:
        """The lines down to the last non-empty one."""
        lines = self.lines
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def __repr__(self) -> str:
        return "\n".join(f"{i:2}|{line}" for i, line in enumerate(self.lines)) + f"\ncursor {self.row},{self.col}"


@pytest.mark.parametrize("data, lines, cursor", [
    ("ab\r\nc", ["ab", "c"], (1, 1)),
    ("abcd\rx", ["xbcd"], (0, 1)),
    ("abcde", ["abcde"], (0, 4)),                        # deferred wrap: still on the last column
    ("abcdef", ["abcde", "f"], (1, 1)),
    ("abcde\r", ["abcde"], (0, 0)),                      # CR cancels the pending wrap
    ("abc\n\n\x1b[A\x1b[Ax", ["abcx"], (0, 4)),          # LF keeps the column, as on a VT100
    ("abc\x1b[2D\x1b[K", ["a"], (0, 1)),
    ("abc\r\n123\x1b[A\x1b[J", ["abc"], (0, 3)),
    ("1\r\n2\r\n3\r\n4", ["2", "3", "4"], (2, 1)),       # scrolls at the bottom
    ("ab\x1b", ["ab"], (0, 2)),                          # the rest of the sequence comes later
])
def test_screen_model(data: str, lines: list[str], cursor: tuple[int, int]) -> None:
    screen = Screen(rows=3, cols=5).feed(data)
    assert screen.text == lines and (screen.row, screen.col) == cursor, repr(screen)


def test_screen_model_refuses_what_it_does_not_know() -> None:
    for data in ("\x1b[5m", "\x1b[?25l", "\x1bM", "\x0e"):
        with pytest.raises(AssertionError, match="unsupported"):
            Screen().feed(data)


# -- a pseudo-terminal ---------------------------------------------------------------------------

# The child makes the terminal its controlling one, as a shell's foreground job has it, so Ctrl-C typed
# on it reaches dlman as SIGINT (and the terminal echoes "^C", as it does for a user).
_CONTROLLING = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                "os.execv(sys.argv[1], sys.argv[1:])")


class Terminal:
    """A process on a pseudo-terminal of ``rows`` x ``cols``, with everything it writes kept."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, rows: int = ROWS, cols: int = COLS) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.NOFLSH  # Ctrl-C must not discard output not read yet: every byte is replayed
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.master, self.rows, self.cols, self.data = master, rows, cols, b""
        self.process = subprocess.Popen([sys.executable, "-c", _CONTROLLING, *argv], stdin=slave, stdout=slave,
                                        stderr=slave, env=env, cwd=cwd, start_new_session=True)
        os.close(slave)
        self.closed = False

    @property
    def output(self) -> str:
        return self.data.decode("utf-8", "replace")

    def pump(self, until: Callable[[str], bool], timeout: float, what: str) -> None:
        """Read what the process writes until ``until(output)`` holds (or it closes the terminal)."""
        deadline = time.monotonic() + timeout
        while not until(self.output):
            if self.closed:
                raise AssertionError(f"the terminal closed before {what}: {self.output[-3000:]!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.output[-3000:]!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                chunk = b""
            if not chunk:
                self.closed = True
            self.data += chunk

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 60, start: str = "") -> tuple[int, Screen]:
        """Wait for the end; the exit status and the final screen (``start``: what it showed before)."""
        try:
            self.pump(lambda _: self.closed, timeout, "the end of the process")
            status = self.process.wait(10)
        finally:
            os.close(self.master)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return status, Screen(self.rows, self.cols).feed(start + self.output)


def run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60,
                    rows: int = ROWS, cols: int = COLS) -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal (so dlman draws bars); (status, everything written)."""
    terminal = Terminal(argv, env, cwd, rows, cols)
    status, _screen = terminal.finish(timeout)
    return status, terminal.output


@pytest.fixture
def env() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and k not in ("DLMAN_HOME", "COLUMNS", "LINES")}
    environ.update(NO_PROXY="*", PYTHONUNBUFFERED="1", TERM="xterm")
    return environ


def dlman(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dlman", "--home", str(tmp_path / "home"), *args]


_BAR = re.compile(r"\d+%\|")


def assert_parked_below(screen: Screen) -> None:
    """The cursor waits at column 0 of a line below every line with text on it."""
    assert screen.col == 0 and not screen.wrap_next, repr(screen)
    assert screen.row >= len(screen.text), repr(screen)
    assert screen.lines[screen.row] == "", repr(screen)


# Where the shell left the cursor: on the first line of a fresh screen, or on the last line of a full
# one, where every new line scrolls the screen (and a line that wraps scrolls it unexpectedly).
START = {"top": "", "bottom": "\r\n" * (ROWS - 1)}


@pytest.mark.parametrize("count, start", [(1, "top"), (3, "top"), (3, "bottom")],
                         ids=["one-file", "three-files", "three-files-at-the-bottom"])
def test_after_the_bars_the_cursor_waits_on_a_fresh_line(server, make_data, tmp_path, env, count, start) -> None:
    # Different sizes: the downloads end one after the other, each leaving a gap among the bars.
    resources = [server.add(f"/f{i}.bin", make_data(300_000 + 150_000 * i, seed=i), throttle=300_000)
                 for i in range(count)]
    terminal = Terminal(dlman(tmp_path, "add", "-c", "1", "-d", "out", *(server.url(r.path) for r in resources)),
                        env, tmp_path)
    status, screen = terminal.finish(start=START[start])
    assert status == 0, terminal.output
    for res in resources:
        assert (tmp_path / "out" / res.path[1:]).read_bytes() == res.data
    assert _BAR.search(terminal.output), "no bar was drawn: " + terminal.output
    if count > 1:
        assert "total:" in terminal.output
    assert sorted(line for line in screen.text if line) == sorted(
        f"done {tmp_path / 'out' / r.path[1:]} ({human_size(len(r.data))})" for r in resources), repr(screen)
    assert_parked_below(screen)


@pytest.mark.parametrize("count, start", [(2, "top"), (1, "bottom")], ids=["two-files", "one-file-at-the-bottom"])
def test_after_ctrl_c_the_cursor_waits_on_a_fresh_line(server, make_data, tmp_path, env, count, start) -> None:
    slow = [server.add(f"/s{i}.bin", make_data(2_000_000, seed=i), throttle=100_000) for i in range(count)]
    terminal = Terminal(dlman(tmp_path, "add", "-c", "1", "-d", "out", *(server.url(r.path) for r in slow)),
                        env, tmp_path)
    terminal.pump(lambda out: len(_BAR.findall(out)) > 2 * count + 2 and all(r.bytes_served > 100_000 for r in slow),
                  30, "the bars to be under way")
    terminal.type(b"\x03")
    status, screen = terminal.finish(start=START[start])
    assert status == 130, terminal.output
    lines = [line for line in screen.text if line]
    assert lines[-1] == "dlman: stopped; partial data kept and interrupted jobs queued again ('dlman run' resumes)", \
        repr(screen)
    # Anything above it is a whole line dlman printed (a warning, wrapped if long), never part of a bar.
    printed = [line for line in re.split(r"[\r\n]", terminal.output) if not _BAR.search(line)]
    assert all(any(piece in line for line in printed) for piece in lines), repr(screen)
    assert not any(_BAR.search(line) or "B/s]" in line or "^C" in line for line in screen.lines), repr(screen)
    assert_parked_below(screen)


# -- units ------------------------------------------------------------------------------------------

_SI = re.compile(r"\d(?:[kKMGT]B?|[kKMGT]?B)(?:/s)?\b")  # tqdm's own: 1.50M, 3.2MB/s, 12kB/s, 300B


def test_bars_print_sizes_and_speeds_in_iec_units_on_the_terminal(server, make_data, tmp_path, env) -> None:
    resources = [server.add(f"/u{i}.bin", make_data(1_500_000, seed=i), throttle=1_000_000) for i in range(2)]
    status, output = run_in_terminal(dlman(tmp_path, "add", "-c", "1", "-d", "out",
                                           *(server.url(r.path) for r in resources)), env, tmp_path)
    assert status == 0, output
    frames = [frame for frame in re.split(r"[\r\n]", output) if _BAR.search(frame)]
    assert frames, output
    assert any(re.search(r"\d KiB/1\.4 MiB .*\d (KiB|MiB)/s\]", frame) for frame in frames), frames
    assert any(re.search(r"\d MiB/2\.9 MiB", frame) for frame in frames if frame.startswith("total")), frames
    assert not [frame for frame in frames if _SI.search(frame)], frames
    assert "(1.4 MiB)" in output


@pytest.mark.parametrize("size, text", [
    (None, "?"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (1024**2 - 1, "1.0 MiB"),
    (3 * 1024**3, "3.0 GiB"), (5 * 1024**4, "5.0 TiB"), (512.7, "512 B"), (2.5 * 1024**2, "2.5 MiB"),
])
def test_human_size_is_iec(size, text) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize("rate, text", [(None, "? B/s"), (0, "? B/s"), (100.4, "100 B/s"), (2048.0, "2.0 KiB/s"),
                                        (3.25 * 1024**2, "3.2 MiB/s")])
def test_human_rate_is_iec(rate, text) -> None:
    assert human_rate(rate) == text


def _job(job_id: int, tmp_path: Path) -> Job:
    return Job(job_id, (f"http://h/{job_id}",), str(tmp_path), True, None, {}, "active", 0, None, None, None, 0.0, 0.0)


def test_bar_display_renders_iec_fields(tmp_path: Path) -> None:
    stream = io.StringIO()
    display = BarDisplay(stream)
    jobs = [_job(i, tmp_path) for i in (1, 2)]
    display.progress(jobs[0], Progress(tmp_path / "a.iso", 512 * 1024, 3 * 1024**2, 1))
    display.progress(jobs[1], Progress(tmp_path / "b.iso", 1024**3 + 1024**3 // 2, None, 1))
    bars = {bar.desc: str(bar) for bar in [*display.bars.values(), display.total_bar]}
    assert re.fullmatch(r"a\.iso: +17%\|.*\| 512\.0 KiB/3\.0 MiB \[00:00<.*, .* B/s\]", bars["a.iso"]), bars
    assert re.fullmatch(r"b\.iso: 1\.5 GiB \[00:00, .* B/s\]", bars["b.iso"]), bars  # size unknown: no bar
    assert re.fullmatch(r"total: 1\.5 GiB \[00:00, .* B/s\]", bars["total"]), bars
    display.progress(jobs[1], Progress(tmp_path / "b.iso", 1024**3 + 1024**3 // 2, 2 * 1024**3, 1))
    assert re.search(r"\| 1\.5 GiB/2\.0 GiB \[", str(display.bars[2])), str(display.bars[2])
    display.ended(Outcome(1, "done", "http://h/1", path=str(tmp_path / "a.iso"), size=3 * 1024**2))
    display.close()
    assert f"done {tmp_path / 'a.iso'} (3.0 MiB)" in stream.getvalue()
    assert not _SI.search(stream.getvalue()), stream.getvalue()
