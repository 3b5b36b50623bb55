"""The ``dlman`` command line: a thin click layer over dlman.queue.

Everything the user typed is validated before the queue is touched, so a usage
error or bad input exits 2 with nothing enqueued. Exit statuses: 0 all done,
1 any failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from dlman import __version__
from dlman.checksum import parse_checksum
from dlman.errors import InvalidInputError
from dlman.manifest import Entry, ManifestError, iter_manifest, read_lines
from dlman.options import check_url, mask_header, mask_url, parse_header, parse_rate
from dlman.progress import human_size, make_display, setup_logging
from dlman.queue import STATES, Job, NewJob, Outcome, Queue, prepare, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Failure(click.ClickException):
    """An error the user can act on: one sentence, no usage text, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *, raw: bool = False) -> None:
        super().__init__(message if raw else f"dlman: {message}")
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


@dataclass
class Settings:
    """The global options, handed to every command."""

    home: str | None
    verbose: int
    quiet: bool
    _queue: Queue | None = None

    def queue(self) -> Queue:
        if self._queue is None:
            try:
                self._queue = Queue(self.home)
            except (OSError, sqlite3.Error) as error:
                raise Failure(f"cannot open the queue in {self.home or 'the default home'}: {error}",
                              EXIT_FAILED) from None
        return self._queue

    def say(self, message: str) -> None:
        """A status line on stderr (silenced by -q)."""
        if not self.quiet:
            click.echo(message, err=True)


class _Group(click.Group):
    """Adds the ``ls`` alias and turns unexpected errors into one line (traceback with -v)."""

    aliases = {"ls": "list"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        _, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else None), command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except InvalidInputError as error:
            raise Failure(redact(str(error))) from None
        except Exception as error:  # noqa: BLE001 - the last line of defence before the user
            settings = ctx.find_object(Settings)
            if settings is not None and settings.verbose:
                sys.stderr.write(redact(traceback.format_exc()))
            raise Failure(f"error: {redact(str(error)) or type(error).__name__}", EXIT_FAILED) from None


def _convert(parser: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback running one of dlman's validators, so bad values are usage errors (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            if isinstance(value, tuple):
                return tuple(parser(item) for item in value)
            return parser(value)
        except InvalidInputError as error:
            raise click.BadParameter(str(error)) from None

    return callback


def _header_text(text: str) -> str:
    name, value = parse_header(text)
    return f"{name}: {value}"


def _ids(ids: Sequence[int]) -> list[int]:
    """Ids in order, each once."""
    return list(dict.fromkeys(ids))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", metavar="DIR", help="Where the queue lives [env DLMAN_HOME; default $XDG_DATA_HOME/dlman].")
@click.option("-v", "--verbose", count=True, help="Log what happens (requests, retries, resumes); -vv for more.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.version_option(__version__, "--version", prog_name="dlman", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int, quiet: bool) -> None:
    """Resumable, segmented HTTP(S) downloads with a persistent queue."""
    ctx.obj = Settings(home, verbose, quiet)
    setup_logging(verbose, quiet)


@cli.command()
@click.argument("urls", nargs=-1, metavar="[URL]...")
@click.option("-i", "--input-file", metavar="FILE", help="Read URLs and options from a manifest ('-' for stdin).")
@click.option("-o", "--output", metavar="PATH", help="Save as PATH, relative to --dir (one URL only).")
@click.option("-d", "--dir", "directory", metavar="DIR", default=".", show_default="the current directory",
              help="Save into DIR, created if missing.")
@click.option("-c", "--connections", type=click.IntRange(1, 64), show_default="8",
              help="Parallel connections per download (1 to 64).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Downloads at once.")
@click.option("--checksum", metavar="ALGO:HEX", callback=_convert(lambda t: str(parse_checksum(t))),
              help="Verify the file (sha256, sha512, sha1, md5; one URL only).")
@click.option("-H", "--header", "headers", multiple=True, metavar="'Name: value'", callback=_convert(_header_text),
              help="Send this request header (repeatable).")
@click.option("--limit-rate", metavar="RATE", callback=_convert(parse_rate),
              help="Bytes per second for the whole run; K, M, G suffixes count 1024.")
@click.option("--retries", type=click.IntRange(min=0), show_default="5", help="Retries per segment.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", show_default="30",
              help="Connect and read timeout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file that differs from the remote one.")
@click.option("--http2", is_flag=True, help="Use HTTP/2 when the server offers it.")
@click.option("--insecure", is_flag=True, help="Skip TLS certificate verification (unsafe).")
@click.option("--later", is_flag=True, help="Only enqueue, print the new job ids, and return.")
@click.pass_obj
def add(settings: Settings, urls: tuple[str, ...], input_file: str | None, output: str | None, directory: str,
        connections: int | None, jobs: int, checksum: str | None, headers: tuple[str, ...],
        limit_rate: int | None, retries: int | None, timeout: float | None, overwrite: bool, http2: bool,
        insecure: bool, later: bool) -> None:
    """Add one job per URL (or per manifest entry) and download them now.

    Returns when all the jobs it added have ended; with --later only enqueues.
    """
    common = {"connections": connections, "checksum": checksum, "headers": list(headers), "overwrite": overwrite,
              "http2": http2, "insecure": insecure, "retries": retries, "timeout": timeout}
    queue = settings.queue()
    added = _distinct(queue.add_stream(_plan(urls, input_file, output, directory, common)))
    if insecure and later:
        settings.say("warning: --insecure: TLS certificates of these jobs will not be verified")
    if later:
        for start in range(0, len(added), 10_000):  # a million ids print in a blink, not one echo each
            click.echo("\n".join(map(str, added[start:start + 10_000])))
        raise click.exceptions.Exit(EXIT_OK)
    raise click.exceptions.Exit(_run(settings, queue, jobs=jobs, ids=added, limit_rate=limit_rate))


def _distinct(ids: Sequence[int]) -> array[int]:
    """Queue ids in order, each once (the same request asked twice is one job), in little memory."""
    seen = bytearray(max(ids, default=0) // 8 + 1)
    kept: array[int] = array("q")
    for job_id in ids:
        if not seen[job_id >> 3] & (1 << (job_id & 7)):
            seen[job_id >> 3] |= 1 << (job_id & 7)
            kept.append(job_id)
    return kept


def _plan(urls: Sequence[str], input_file: str | None, output: str | None, directory: str,
          common: dict[str, Any]) -> Iterator[NewJob]:
    """Every job ``add`` was asked for, validated as it is read; it raises Failure (exit 2) after
    the last line when anything was wrong, and the caller's transaction then enqueues nothing."""
    problems = []
    for url in urls:
        try:
            check_url(url)
        except InvalidInputError as error:
            problems.append(f"dlman: {error}")
    directory = os.path.abspath(directory)  # once, not once per entry
    count = 0
    misuse = None
    templates: dict[tuple[Any, ...], NewJob] = {}
    for url in urls:
        count += 1
        if not problems:
            yield prepare(url, _as_dir(directory), output=output, **common)
    try:
        for entry in _manifest(input_file):
            count += 1
            if count > 1 and misuse is None:
                misuse = ("-o/--output takes one URL only" if output else
                          "--checksum takes one URL only" if common["checksum"] else None)
            if problems or misuse:
                continue
            yield _entry_job(entry, directory, common, templates)
    except ManifestError as error:
        problems += error.problems
    if problems:
        if input_file is not None:
            problems.append("dlman: nothing was added")
        raise Failure("\n".join(problems), raw=True)
    if count == 0:
        raise click.UsageError("no URL given: pass one or more URLs, or -i FILE")
    if misuse or (count > 1 and (output or common["checksum"])):
        raise click.UsageError(misuse or ("-o/--output takes one URL only" if output else
                                          "--checksum takes one URL only"))


def _entry_job(entry: Entry, directory: str, common: dict[str, Any], templates: dict[tuple[Any, ...], NewJob]
               ) -> NewJob:
    """``prepare`` for one manifest entry. Entries that differ only in their URLs and names share
    one ``prepare`` of their directory and options (the URLs and names were checked as the
    manifest was read): a million of them would otherwise each pay for checking it all again."""
    where = os.path.join(directory, entry.dir) if entry.dir else directory
    key = (where, entry.headers, entry.connections, entry.checksum)
    template = templates.get(key)
    if template is None:
        if len(templates) >= 1024:
            templates.clear()
        options = dict(common)
        options["headers"] = list(common["headers"]) + list(entry.headers)
        if entry.connections is not None:
            options["connections"] = entry.connections
        if entry.checksum is not None:
            options["checksum"] = entry.checksum
        template = templates[key] = prepare(list(entry.urls), _as_dir(where), **options)
    if entry.out is None:
        return NewJob(urls=entry.urls, dest=template.dest, dest_is_dir=True, output=None, options=template.options)
    # As prepare places an output: inside the directory (check_out normalised it and kept it there).
    return NewJob(urls=entry.urls, dest=os.path.join(template.dest, entry.out), dest_is_dir=False,
                  output=entry.out, options=template.options)


def _manifest(source: str | None) -> Iterator[Entry]:
    """The entries of the manifest ``-i`` names, read and checked a line at a time."""
    if source is None:
        return
    name = "<stdin>" if source == "-" else source
    try:
        handle = sys.stdin.buffer if source == "-" else open(source, "rb")
    except OSError as error:
        raise Failure(f"cannot read manifest {source}: {error.strerror or error}") from None
    try:
        yield from iter_manifest(read_lines(handle, name), name)
    except OSError as error:
        raise Failure(f"cannot read manifest {source}: {error.strerror or error}") from None
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def _as_dir(path: str) -> str:
    """A directory path that stays one even before it exists."""
    return path if path.endswith(os.sep) else path + os.sep


def _run(settings: Settings, queue: Queue, *, jobs: int = 4, ids: Sequence[int] | None = None,
         limit_rate: int | None = None) -> int:
    """Run the queue in the foreground with a display; the exit status for the jobs it ran."""
    display = make_display(settings.quiet)
    received: list[int] = []

    async def main() -> dict[int, Outcome] | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if received:
                display.write("dlman: still stopping, saving state; please wait")
                return
            received.append(signum)
            task.cancel()

        for signum in EXIT_SIGNAL:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await queue.arun(jobs, ids=ids, limit_rate=limit_rate, listener=display)
        except asyncio.CancelledError:
            if received:
                return None
            raise
        finally:
            for signum in EXIT_SIGNAL:
                loop.remove_signal_handler(signum)

    try:
        outcomes = asyncio.run(main())
    finally:
        display.close()
    if outcomes is None:
        settings.say("dlman: stopped; partial data kept and interrupted jobs queued again ('dlman run' resumes)")
        return EXIT_SIGNAL[signal.Signals(received[0])]
    if ids is None:
        # `run` answers for failures: a job the user paused or removed meanwhile did not fail.
        failed = any(o.state == "failed" for o in outcomes.values())
    else:
        # `add` and `resume` answer for their own jobs: each must end done.
        failed = any(o.state != "done" for o in outcomes.values())
    return EXIT_FAILED if failed else EXIT_OK


@cli.command()
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Downloads at once.")
@click.pass_obj
def run(settings: Settings, jobs: int) -> None:
    """Download every queued job until none is left (including jobs added meanwhile)."""
    queue = settings.queue()
    raise click.exceptions.Exit(_run(settings, queue, jobs=jobs))


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.pass_obj
def list_(settings: Settings, as_json: bool, state: str | None) -> None:
    """The jobs: id, state, progress, size, destination, URL, last error (alias: ls)."""
    jobs = settings.queue().list(state)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in jobs], indent=2))
        return
    if not jobs:
        settings.say("no jobs")
        return
    rows = [("ID", "STATE", "PROGRESS", "SIZE", "DEST", "URL")] + [_row(job) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row, job in zip(rows, [None] + jobs):
        cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4].ljust(widths[4]), row[5]]
        click.echo("  ".join(cells).rstrip())
        if job is not None and job.error:
            click.echo(f"{'':>{widths[0]}}  error: {redact(job.error)}")
        if job is not None and job.options.get("headers") and settings.verbose:
            click.echo(f"{'':>{widths[0]}}  headers: {', '.join(mask_header(h) for h in job.options['headers'])}")


def _row(job: Job) -> tuple[str, str, str, str, str, str]:
    if job.total_bytes:
        progress = f"{min(100.0, 100.0 * job.bytes_done / job.total_bytes):.0f}%"
    else:
        progress = human_size(job.bytes_done) if job.bytes_done else "-"
    size = human_size(job.total_bytes) if job.total_bytes is not None else "?"
    dest = job.dest + (os.sep if job.dest_is_dir else "")
    mirrors = f" (+{len(job.urls) - 1} mirrors)" if len(job.urls) > 1 else ""
    return str(job.id), job.state, progress, size, dest, mask_url(job.url) + mirrors


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_obj
def pause(settings: Settings, ids: tuple[int, ...]) -> None:
    """Pause jobs: a queued one is skipped by run, an active one stops, keeping its partial data."""
    jobs = settings.queue().pause(*_ids(ids))
    status = EXIT_OK
    for job in jobs:
        if job.state == "paused":
            settings.say(f"paused job {job.id}")
        else:
            click.echo(f"dlman: job {job.id} is {job.state}: nothing to pause", err=True)
            status = EXIT_FAILED
    raise click.exceptions.Exit(status)


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--later", is_flag=True, help="Only put them back in the queue.")
@click.pass_obj
def resume(settings: Settings, ids: tuple[int, ...], later: bool) -> None:
    """Put paused, failed or interrupted jobs back in the queue and download them now."""
    queue = settings.queue()
    jobs = queue.resume(*_ids(ids))
    if later:
        for job in jobs:
            settings.say(f"job {job.id} is {job.state}")
        raise click.exceptions.Exit(EXIT_OK)
    raise click.exceptions.Exit(_run(settings, queue, ids=[job.id for job in jobs]))


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--delete", is_flag=True, help="Also delete their partial data (never a finished file).")
@click.pass_obj
def remove(settings: Settings, ids: tuple[int, ...], delete: bool) -> None:
    """Drop jobs from the queue, stopping them if active."""
    settings.queue().remove(*_ids(ids), delete=delete)
    for job_id in _ids(ids):
        settings.say(f"removed job {job_id}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point."""
    try:
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="dlman", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        status = error.exit_code
    except click.Abort:
        status = EXIT_SIGNAL[signal.SIGINT]
    except KeyboardInterrupt:
        status = EXIT_SIGNAL[signal.SIGINT]
    sys.exit(status if isinstance(status, int) else EXIT_OK)
