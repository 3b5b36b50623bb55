"""The ``dlman`` command line: a thin click layer over dlman.queue.

Everything the user typed is validated before the queue is touched, so a usage
error or bad input exits 2 with nothing enqueued. Exit statuses: 0 all done,
1 any failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM.

Start-up matters (``dlman --version``, shell completion): this module imports only click at
first; the queue, the engine (httpx, asyncio) and tqdm are imported by the commands that use them.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from dlman import __version__
from dlman.progress import MODES as PROGRESS_MODES
from dlman.states import STATES

if TYPE_CHECKING:
    from array import array

    from click.shell_completion import CompletionItem

    from dlman.manifest import Entry
    from dlman.queue import Job, NewJob, Outcome, Queue

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
WATCH_ORDER = ("active", "queued", "paused", "failed", "done")  # what a watcher wants to see first
COMPLETION_LIMIT = 200


class Failure(click.ClickException):
    """An error the user can act on: one sentence, no usage text, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *, raw: bool = False) -> None:
        super().__init__(message if raw else f"dlman: {message}")
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class; ours is per error

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


@dataclass
class Settings:
    """The global options, handed to every command (which may add to them: ``dlman add URL -v``)."""

    home: str | None
    verbose: int
    quiet: bool
    progress: str = "auto"
    _queue: "Queue | None" = field(default=None, repr=False)

    def queue(self) -> "Queue":
        if self._queue is None:
            import sqlite3

            from dlman.queue import Queue
            try:
                self._queue = Queue(self.home)
            except (OSError, sqlite3.Error) as error:
                raise Failure(f"cannot open the queue in {self.home or 'the default home'}: {error}",
                              EXIT_FAILED) from None
        return self._queue

    def say(self, message: str) -> None:
        """A status line on stderr (silenced by -q; a JSON line with --progress json)."""
        if self.progress == "json":
            import json

            click.echo(json.dumps({"event": "message", "message": message}), err=True)
        elif not self.quiet:
            click.echo(message, err=True)

    def configure_logging(self) -> None:
        from dlman.progress import setup_logging

        setup_logging(self.verbose, self.quiet, as_json=self.progress == "json")


def _redact(text: str) -> str:
    from dlman.options import redact

    return redact(text)


class _Group(click.Group):
    """Adds the ``ls`` alias and turns unexpected errors into one line (traceback with -v)."""

    aliases = {"ls": "list"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        _, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else None), command, rest

    def invoke(self, ctx: click.Context) -> Any:
        from dlman.errors import InvalidInputError

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, BrokenPipeError):
            raise
        except InvalidInputError as error:
            raise Failure(_redact(str(error))) from None
        except Exception as error:  # noqa: BLE001 - the last line of defence before the user
            settings = ctx.find_object(Settings)
            if settings is not None and settings.verbose:
                import traceback

                sys.stderr.write(_redact(traceback.format_exc()))
            raise Failure(f"error: {_redact(str(error)) or type(error).__name__}", EXIT_FAILED) from None


def _convert(parser: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback running one of dlman's validators, so bad values are usage errors (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from dlman.errors import InvalidInputError

        if value is None:
            return None
        try:
            if isinstance(value, tuple):
                return tuple(parser(item) for item in value)
            return parser(value)
        except InvalidInputError as error:
            raise click.BadParameter(str(error)) from None

    return callback


def _checksum_text(text: str) -> str:
    from dlman.checksum import parse_checksum

    return str(parse_checksum(text))


def _header_text(text: str) -> str:
    from dlman.options import parse_header

    name, value = parse_header(text)
    return f"{name}: {value}"


def _rate(text: str | int) -> int | None:
    from dlman.options import parse_rate

    return parse_rate(text if isinstance(text, int) else str(text))


def _hook(text: str) -> str:
    from dlman.hooks import parse_hook

    parse_hook(text)
    return text


class _HeaderType(click.ParamType):  # type: ignore[type-arg, unused-ignore]  # generic from click 8.2
    """``Name: value``; in ``DLMAN_HEADER`` one header per line (values hold spaces)."""

    name = "header"
    envvar_list_splitter = "\n"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from dlman.errors import InvalidInputError

        try:
            return _header_text(value)
        except InvalidInputError as error:
            self.fail(str(error), param, ctx)


def _ids(ids: Iterable[int]) -> list[int]:
    """Ids in order, each once."""
    return list(dict.fromkeys(ids))


# -- completion: job ids from the queue -------------------------------------------------------

def _complete_ids(*states: str) -> Callable[[click.Context, click.Parameter, str], list["CompletionItem"]]:
    """Completes job ids (in ``states``, or any) from the queue, without creating one."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list["CompletionItem"]:
        from click.shell_completion import CompletionItem

        from dlman.home import resolve_home
        from dlman.options import mask_url
        from dlman.queue import Queue

        home = resolve_home(ctx.find_root().params.get("home"))
        if not (home / "queue.db").exists():
            return []
        typed = {str(i) for i in (ctx.params.get(param.name or "") or ())}
        items = []
        with Queue(home) as queue:
            for state in states or (None,):
                for job in queue.iter_jobs(state):
                    text = str(job.id)
                    if text.startswith(incomplete) and text not in typed:
                        items.append(CompletionItem(text, help=f"{job.state} {mask_url(job.url)}"))
                        if len(items) >= COMPLETION_LIMIT:
                            return items
        return items

    return complete


# -- options shared by several commands ---------------------------------------------------------

def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """``-v``, ``-q`` and ``--home`` after the command name add to the ones before it."""
    settings = ctx.find_object(Settings)
    if settings is None or not value:
        return
    if param.name == "verbose":
        settings.verbose += value
    elif param.name == "quiet":
        settings.quiet = True
    elif param.name == "home":
        settings.home = value
    settings.configure_logging()


def global_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The global options, accepted after the command name too (users type them there)."""
    for option in reversed((
        click.option("--home", metavar="DIR", expose_value=False, callback=_set_global,
                     help="Where the queue lives (also before the command)."),
        click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_global,
                     help="Log what happens; -vv for more (also before the command)."),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_global,
                     help="Print errors only (also before the command)."),
    )):
        function = option(function)
    return function


def run_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """How a foreground run goes: downloads at once, the run's rate, progress output, hooks."""
    for option in reversed((
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Downloads at once."),
        click.option("--limit-rate", metavar="RATE", callback=_convert(_rate),
                     help="Bytes per second for the whole run; K, M, G suffixes count 1024."),
        click.option("--progress", type=click.Choice(PROGRESS_MODES), default="auto", show_default=True,
                     help="Progress output on stderr: bars on a terminal, else a line per job (auto); "
                          "json: one JSON object per line, for programs; none: failures only."),
        click.option("--on-done", metavar="CMD", callback=_convert(_hook),
                     help="Run CMD (no shell) with the job's id, path and URL after a job is done."),
        click.option("--on-fail", metavar="CMD", callback=_convert(_hook),
                     help="Run CMD (no shell) with the job's id, path and URL after a job failed."),
    )):
        function = option(function)
    return function


# -- the commands ---------------------------------------------------------------------------

EPILOG = """\b
Defaults for the options of add, run and resume come from a TOML config file
($XDG_CONFIG_HOME/dlman/config.toml, --config FILE or DLMAN_CONFIG; keys are the
long option names, e.g. connections = 16) and from DLMAN_<OPTION> variables
(e.g. DLMAN_LIMIT_RATE=2M); the command line wins over both.
Shell completion: eval "$(_DLMAN_COMPLETE=bash_source dlman)" (zsh_source, fish_source)."""


def _load_config(ctx: click.Context, config: str | None, no_config: bool) -> None:
    """The config file's values become the commands' defaults (below environment and command line)."""
    from dlman import config as config_module

    group = ctx.command
    assert isinstance(group, click.Group)
    commands = [group.commands[name] for name in ("add", "run", "resume")]
    try:
        _, defaults = config_module.load(config, no_config, commands)
    except config_module.ConfigError as error:
        raise Failure("\n".join(error.problems), raw=True) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("--home", metavar="DIR", help="Where the queue lives [env DLMAN_HOME; default $XDG_DATA_HOME/dlman].")
@click.option("-v", "--verbose", count=True, help="Log what happens (requests, retries, resumes); -vv for more.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.option("--config", metavar="FILE", help="Read defaults from this TOML file [env DLMAN_CONFIG].")
@click.option("--no-config", is_flag=True, help="Read no config file.")
@click.version_option(__version__, "--version", prog_name="dlman", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int, quiet: bool, config: str | None,
        no_config: bool) -> None:
    """Resumable, segmented HTTP(S) downloads with a persistent queue."""
    settings = ctx.obj = Settings(home, verbose, quiet)
    settings.configure_logging()
    _load_config(ctx, config, no_config)


@cli.command()
@click.argument("urls", nargs=-1, metavar="[URL]...")
@click.option("-i", "--input-file", metavar="FILE", help="Read URLs and options from a manifest ('-' for stdin).")
@click.option("-o", "--output", metavar="PATH", help="Save as PATH, relative to --dir (one URL only).")
@click.option("-d", "--dir", "directory", metavar="DIR", default=".", show_default="the current directory",
              help="Save into DIR, created if missing.")
@click.option("-c", "--connections", type=click.IntRange(1, 64), show_default="8",
              help="Parallel connections per download (1 to 64).")
@click.option("--checksum", metavar="ALGO:HEX", callback=_convert(_checksum_text),
              help="Verify the file (sha256, sha512, sha1, md5; one URL only).")
@click.option("-H", "--header", "headers", multiple=True, metavar="'Name: value'", type=_HeaderType(),
              help="Send this request header (repeatable).")
@click.option("--max-speed", metavar="RATE", callback=_convert(_rate),
              help="Bytes per second for each download (within --limit-rate); K, M, G count 1024.")
@click.option("--retries", type=click.IntRange(min=0), show_default="5", help="Retries per segment.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", show_default="30",
              help="Connect and read timeout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file that differs from the remote one.")
@click.option("--http2", is_flag=True, help="Use HTTP/2 when the server offers it.")
@click.option("--insecure", is_flag=True, help="Skip TLS certificate verification (unsafe).")
@click.option("--verify-digest/--no-verify-digest", default=True, show_default=True,
              help="Without --checksum, verify the digest the server sends (Repr-Digest, Digest, x-goog-hash...).")
@click.option("--load-cookies", metavar="FILE", help="Send the cookies of this Netscape cookies.txt file.")
@click.option("--save-cookies", metavar="FILE", help="Save the cookies to this file when the run ends.")
@run_options
@click.option("--later", is_flag=True, help="Only enqueue, print the new job ids, and return.")
@global_options
@click.pass_obj
def add(settings: Settings, urls: tuple[str, ...], input_file: str | None, output: str | None, directory: str,
        connections: int | None, checksum: str | None, headers: tuple[str, ...], max_speed: int | None,
        retries: int | None, timeout: float | None, overwrite: bool, http2: bool, insecure: bool,
        verify_digest: bool, load_cookies: str | None, save_cookies: str | None, jobs: int,
        limit_rate: int | None, progress: str, on_done: str | None, on_fail: str | None, later: bool) -> None:
    """Add one job per URL (or per manifest entry) and download them now.

    Returns when all the jobs it added have ended; with --later only enqueues.
    """
    common = {"connections": connections, "checksum": checksum, "headers": list(headers), "overwrite": overwrite,
              "http2": http2, "insecure": insecure, "retries": retries, "timeout": timeout, "max_speed": max_speed,
              "verify_digest": verify_digest, "verify": None if insecure else _ca_from_environment(),
              "load_cookies": load_cookies, "save_cookies": save_cookies, "on_done": on_done, "on_fail": on_fail}
    manifest = _open_manifest(input_file)
    queue = settings.queue()
    added = _distinct(queue.add_stream(_plan(urls, input_file, manifest, output, directory, common)))
    if insecure and later:
        settings.say("warning: --insecure: TLS certificates of these jobs will not be verified")
    if later:
        for start in range(0, len(added), 10_000):  # a million ids print in a blink, not one echo each
            click.echo("\n".join(map(str, added[start:start + 10_000])))
        raise click.exceptions.Exit(EXIT_OK)
    settings.progress = progress
    raise click.exceptions.Exit(_run(settings, queue, jobs=jobs, ids=added, limit_rate=limit_rate))


def _ca_from_environment() -> str | None:
    """The CA bundle (or directory) in force, stored with the job so a later run from another shell
    verifies the same way; the order is httpx's (SSL_CERT_FILE, then SSL_CERT_DIR). A path that is
    not there is not stored: the run names the variable and the path then, as it does for any job."""
    path = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
    return path if path and os.path.exists(path) else None


def _distinct(ids: Sequence[int]) -> "array[int]":
    """Queue ids in order, each once (the same request asked twice is one job), in little memory."""
    from array import array

    seen = bytearray(max(ids, default=0) // 8 + 1)
    kept = array("q")
    for job_id in ids:
        if not seen[job_id >> 3] & (1 << (job_id & 7)):
            seen[job_id >> 3] |= 1 << (job_id & 7)
            kept.append(job_id)
    return kept


def _plan(urls: Sequence[str], input_file: str | None, manifest: "BinaryIO | None", output: str | None,
          directory: str, common: dict[str, Any]) -> Iterator["NewJob"]:
    """Every job ``add`` was asked for, validated as it is read; it raises Failure (exit 2) after
    the last line when anything was wrong, and the caller's transaction then enqueues nothing."""
    from dlman.errors import InvalidInputError
    from dlman.manifest import ManifestError
    from dlman.options import check_url
    from dlman.queue import prepare

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
        for entry in _manifest(input_file, manifest):
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


def _entry_job(entry: "Entry", directory: str, common: dict[str, Any], templates: dict[tuple[Any, ...], "NewJob"]
               ) -> "NewJob":
    """``prepare`` for one manifest entry. Entries that differ only in their URLs and names share
    one ``prepare`` of their directory and options (the URLs and names were checked as the
    manifest was read): a million of them would otherwise each pay for checking it all again."""
    from dlman.queue import NewJob, prepare

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


def _as_dir(path: str) -> str:
    """A directory path that stays one even before it exists."""
    return path if path.endswith(os.sep) else path + os.sep


def _open_manifest(source: str | None) -> "BinaryIO | None":
    """The manifest ``-i`` names, open for reading. Input that is not a regular file (stdin, a
    pipe) is first copied to an unnamed temporary file, in flat memory: the queue's write
    transaction that takes the entries must never wait on a slow producer."""
    import shutil
    import stat
    import tempfile

    if source is None:
        return None
    try:
        handle: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")
        try:
            regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
        except (OSError, ValueError, io.UnsupportedOperation):
            regular = False
        if not regular:
            spool = tempfile.TemporaryFile()
            shutil.copyfileobj(handle, spool, 1 << 20)
            spool.seek(0)
            if handle is not sys.stdin.buffer:
                handle.close()
            handle = spool
    except OSError as error:
        raise Failure(f"cannot read manifest {source}: {error.strerror or error}") from None
    return handle


def _manifest(source: str | None, handle: "BinaryIO | None") -> Iterator["Entry"]:
    """The entries of the manifest ``-i`` names (open as ``handle``), read and checked a line at a time."""
    from dlman.manifest import iter_manifest, read_lines

    if source is None or handle is None:
        return
    name = "<stdin>" if source == "-" else source
    try:
        yield from iter_manifest(read_lines(handle, name), name)
    except OSError as error:
        raise Failure(f"cannot read manifest {source}: {error.strerror or error}") from None
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def _run(settings: Settings, queue: "Queue", *, jobs: int = 4, ids: Sequence[int] | None = None,
         limit_rate: int | None = None, on_done: str | None = None, on_fail: str | None = None) -> int:
    """Run the queue in the foreground with a display; the exit status for the jobs it ran."""
    import asyncio

    from dlman.progress import make_display

    settings.configure_logging()
    display = make_display(settings.progress, settings.quiet)
    received: list[int] = []

    async def main() -> "dict[int, Outcome] | None":
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
            return await queue.arun(jobs, ids=ids, limit_rate=limit_rate, listener=display, on_done=on_done,
                                    on_fail=on_fail)
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
@run_options
@global_options
@click.pass_obj
def run(settings: Settings, jobs: int, limit_rate: int | None, progress: str, on_done: str | None,
        on_fail: str | None) -> None:
    """Download every queued job until none is left (including jobs added meanwhile).

    --on-done/--on-fail apply to the jobs that were added without hooks of their own.
    """
    queue = settings.queue()
    settings.progress = progress
    raise click.exceptions.Exit(_run(settings, queue, jobs=jobs, limit_rate=limit_rate, on_done=on_done,
                                     on_fail=on_fail))


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--watch", is_flag=True, help="Show the table again every --interval seconds, until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds between two tables with --watch.")
@global_options
@click.pass_obj
def list_(settings: Settings, as_json: bool, state: str | None, watch: bool, interval: float) -> None:
    """The jobs: id, state, progress, size, destination, URL, last error (alias: ls).

    The list is written as it is read, so a long queue starts printing at once.
    """
    queue = settings.queue()
    out = sys.stdout
    if watch:
        if as_json:
            raise click.UsageError("--watch shows a table; for machine-readable progress use --progress json "
                                   "with add, run or resume")
        _watch(settings, queue, state, interval)
    if as_json:
        _write_json(out, queue.iter_jobs(state))
        return
    wrote = False
    for line in _table(queue.iter_jobs(state), settings.verbose):
        out.write(line + "\n")
        wrote = True
    out.flush()
    if not wrote:
        settings.say("no jobs")


def _write_json(out: Any, jobs: Iterable["Job"]) -> None:
    """A JSON array (as ``json.dumps(..., indent=2)`` writes it), one job at a time."""
    import json

    count = 0
    for job in jobs:
        text = json.dumps(job.to_dict(), indent=2).replace("\n", "\n  ")
        out.write(("[\n  " if count == 0 else ",\n  ") + text)
        count += 1
        if count == 1:
            out.flush()
    out.write("\n]\n" if count else "[]\n")
    out.flush()


HEADINGS = ("ID", "STATE", "PROGRESS", "SIZE", "DEST", "URL")


def _table(jobs: Iterable["Job"], verbose: int = 0, page: int = 500) -> Iterator[str]:
    """The table's lines, one job after another; the column widths are taken from the first ``page`` jobs."""
    import itertools

    from dlman.options import mask_header

    iterator = iter(jobs)
    first = list(itertools.islice(iterator, page))
    if not first:
        return
    rows = [HEADINGS] + [_row(job) for job in first]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4].ljust(widths[4]), row[5]]
        return "  ".join(cells).rstrip()

    yield line(HEADINGS)
    for job in itertools.chain(first, iterator):
        yield line(_row(job))
        if job.error:
            yield f"{'':>{widths[0]}}  error: {_redact(job.error)}"
        if job.options.get("headers") and verbose:
            yield f"{'':>{widths[0]}}  headers: {', '.join(mask_header(h) for h in job.options['headers'])}"


def _row(job: "Job") -> tuple[str, str, str, str, str, str]:
    from dlman.options import mask_url
    from dlman.progress import human_size

    if job.total_bytes:
        progress = f"{min(100.0, 100.0 * job.bytes_done / job.total_bytes):.0f}%"
    else:
        progress = human_size(job.bytes_done) if job.bytes_done else "-"
    size = human_size(job.total_bytes) if job.total_bytes is not None else "?"
    dest = job.dest + (os.sep if job.dest_is_dir else "")
    mirrors = f" (+{len(job.urls) - 1} mirrors)" if len(job.urls) > 1 else ""
    return str(job.id), job.state, progress, size, dest, mask_url(job.url) + mirrors


def _watch(settings: Settings, queue: "Queue", state: str | None, interval: float) -> NoReturn:
    """The table again and again until Ctrl-C: on a terminal in place, the jobs that matter first."""
    import itertools
    import shutil

    tty = sys.stdout.isatty()
    while True:
        limit = max(3, shutil.get_terminal_size().lines - 3) if tty else None
        jobs = itertools.chain.from_iterable(queue.iter_jobs(s) for s in ((state,) if state else WATCH_ORDER))
        shown = list(itertools.islice(jobs, limit)) if limit else list(jobs)
        lines = list(_table(shown, settings.verbose)) or ["no jobs"]
        if limit is not None:
            lines = lines[:limit + 1]
            hidden = queue.count(state) - len(shown)
            if hidden > 0:
                lines.append(f"... and {hidden} more ('dlman list' shows them all)")
        heading = f"dlman: {time.strftime('%H:%M:%S')}, every {interval:g} s (Ctrl-C to stop)"
        screen = "\x1b[H\x1b[2J" if tty else ""
        sys.stdout.write(screen + heading + "\n" + "\n".join(lines) + "\n\n")
        sys.stdout.flush()
        time.sleep(interval)


@cli.command()
@click.argument("job_id", type=int, metavar="ID", shell_complete=_complete_ids())
@click.option("--json", "as_json", is_flag=True, help="Print the job as a JSON object.")
@global_options
@click.pass_obj
def show(settings: Settings, job_id: int, as_json: bool) -> None:
    """One job in full: URLs and mirrors, options, digest, last error, partial data on disk."""
    import json

    queue = settings.queue()
    queue.check_ids([job_id])
    job = queue.get(job_id)
    assert job is not None
    details = job.to_dict()
    details["partial"] = _partial(job)
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for label, value in _describe(details):
        click.echo(f"{label + ':':<10} {value}")


def _partial(job: "Job") -> dict[str, Any] | None:
    """What is on disk for an unfinished job: the .part file's size, and what its state claims and expects."""
    from pathlib import Path

    from dlman.naming import part_path, state_path
    from dlman.state import ResumeState, StateError

    if job.dest_is_dir or job.state == "done":
        return None
    part, saved = part_path(Path(job.dest)), state_path(Path(job.dest))
    if not part.exists():
        return None
    found: dict[str, Any] = {"path": str(part), "size_on_disk": part.stat().st_size, "state_file": None}
    try:
        state = ResumeState.decode(saved.read_bytes())
    except FileNotFoundError:
        return found
    except (OSError, StateError) as error:
        found["state_file"] = {"path": str(saved), "error": str(error)}
        return found
    found["state_file"] = {"path": str(saved), "size": state.size, "bytes_claimed": state.downloaded,
                           "digest": state.digest, "digest_source": state.digest_source}
    return found


def _describe(details: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The lines of ``show``, label and value."""
    from dlman.progress import human_size

    yield "job", f"{details['id']} ({details['state']})"
    yield "url", details["url"]
    for mirror in details["urls"][1:]:
        yield "mirror", mirror
    yield "dest", details["dest"]
    total = details["total_bytes"]
    done = human_size(details["bytes_done"])
    yield "progress", f"{done} of {human_size(total)}" + (f" ({100 * details['bytes_done'] / total:.0f}%)"
                                                          if total else "")
    for key, value in details["options"].items():
        shown = "; ".join(value) if isinstance(value, list) else value
        yield "option", f"{key.replace('_', '-')} = {shown}"
    if details["digest"]:
        yield "digest", f"{details['digest']} (from {details['digest_source']})"
    partial = details["partial"]
    if partial:
        yield "partial", f"{partial['path']} ({human_size(partial['size_on_disk'])} on disk)"
        state = partial["state_file"]
        if state and "error" in state:
            yield "state", f"{state['path']}: unusable ({state['error']}); the next attempt starts over"
        elif state:
            yield "state", f"{state['path']} ({human_size(state['bytes_claimed'])} of {human_size(state['size'])} saved)"
            if state["digest"]:
                yield "expects", f"{state['digest']} (from {state['digest_source']})"
    if details["error"]:
        yield "error", details["error"]
    for key in ("created", "updated"):
        yield key, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(details[key]))


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True, shell_complete=_complete_ids("queued", "active"))
@global_options
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
@click.argument("ids", nargs=-1, type=int, required=True, shell_complete=_complete_ids("paused", "failed", "queued"))
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="A fresh URL for the job (one job only), e.g. for an expired presigned URL; repeat for "
                   "mirrors. The partial data is resumed when the new URL serves the same file.")
@run_options
@click.option("--later", is_flag=True, help="Only put them back in the queue.")
@global_options
@click.pass_obj
def resume(settings: Settings, ids: tuple[int, ...], urls: tuple[str, ...], jobs: int, limit_rate: int | None,
           progress: str, on_done: str | None, on_fail: str | None, later: bool) -> None:
    """Put paused, failed or interrupted jobs back in the queue and download them now."""
    if urls and len(_ids(ids)) != 1:
        raise click.UsageError("--url is for one job at a time")
    queue = settings.queue()
    resumed = queue.resume(*_ids(ids), url=list(urls) if urls else None)
    if later:
        for job in resumed:
            settings.say(f"job {job.id} is {job.state}")
        raise click.exceptions.Exit(EXIT_OK)
    settings.progress = progress
    raise click.exceptions.Exit(_run(settings, queue, jobs=jobs, ids=[job.id for job in resumed],
                                     limit_rate=limit_rate, on_done=on_done, on_fail=on_fail))


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True, shell_complete=_complete_ids())
@click.option("--delete", is_flag=True, help="Also delete their partial data (never a finished file).")
@global_options
@click.pass_obj
def remove(settings: Settings, ids: tuple[int, ...], delete: bool) -> None:
    """Drop jobs from the queue, stopping them if active."""
    settings.queue().remove(*_ids(ids), delete=delete)
    for job_id in _ids(ids):
        settings.say(f"removed job {job_id}")


def _add_serve() -> None:
    """``dlman serve``: its command imports none of the web stack until it runs."""
    from dlman.server.command import serve

    cli.add_command(serve, "serve")


_add_serve()


def _bind_environment() -> None:
    from dlman.config import bind_environment

    bind_environment([cli.commands["add"], cli.commands["run"], cli.commands["resume"]])


_bind_environment()


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
