"""Commands run when a job ends (``--on-done CMD``, ``--on-fail CMD``), like aria2's ``--on-download-complete``.

No shell: the command is split as a shell would split it (``shlex``) and run directly, so a file
name or URL can never be taken for shell syntax; whoever wants a shell writes one
(``--on-done 'sh -c "..." hook'``). The job's id, path and URL are appended as arguments and set in
the environment. Each hook runs in a thread of its own, so downloads go on meanwhile; a hook that
cannot be started or exits non-zero is logged, and never changes how the job ended.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dlman.errors import InvalidInputError
from dlman.options import mask_url

if TYPE_CHECKING:
    from dlman.queue.jobs import Job, Outcome
    from dlman.result import Progress

log = logging.getLogger("dlman")

EVENTS = {"done": "on_done", "failed": "on_fail"}  # how a job ended -> the option naming its hook


def parse_hook(command: str) -> list[str]:
    """The argument vector of a hook command; InvalidInputError if it is empty or its program is missing."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise InvalidInputError(f"invalid hook command {command!r}: {error}") from None
    if not argv:
        raise InvalidInputError("empty hook command")
    if shutil.which(argv[0]) is None:
        raise InvalidInputError(f"hook program not found or not executable: {argv[0]}")
    return argv


def stored_hook(command: str) -> str:
    """The command as a job keeps it: checked, with a relative program path made absolute, since a
    later ``dlman run`` may start in another directory (a bare name is looked up in PATH then)."""
    argv = parse_hook(command)
    if os.sep not in argv[0] or os.path.isabs(argv[0]):
        return command
    return shlex.join([os.path.abspath(argv[0]), *argv[1:]])


def invocation(command: str, outcome: "Outcome", environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment of the hook for ``outcome`` (pure).

    The arguments are visible to every user of the machine (``ps``), so the URL there is
    masked; the environment is the user's own and carries the URL as given.
    """
    path = outcome.path or ""
    argv = shlex.split(command) + [str(outcome.job_id), path, mask_url(outcome.url)]
    env = dict(environ)
    env.update(DLMAN_JOB_ID=str(outcome.job_id), DLMAN_PATH=path, DLMAN_URL=outcome.url,
               DLMAN_STATE=outcome.state, DLMAN_ERROR=outcome.error or "")
    return argv, env


def _run(command: str, outcome: "Outcome") -> None:
    argv, env = invocation(command, outcome, os.environ)
    what = f"job {outcome.job_id}: hook {argv[0]}"
    try:
        status = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as error:
        log.warning("%s could not run: %s", what, error.strerror or error)
        return
    if status != 0:
        log.warning("%s exited with status %d", what, status)
    else:
        log.info("%s done", what)


class Hooks:
    """A run's listener that runs each ended job's hook: its own, else the run's ``on_done``/``on_fail``.

    Only jobs this run started: a job another process downloaded gets its hook there.
    """

    def __init__(self, on_done: str | None = None, on_fail: str | None = None) -> None:
        self.defaults = {"on_done": on_done, "on_fail": on_fail}
        self.commands: dict[int, dict[str, str | None]] = {}
        self.threads: list[threading.Thread] = []

    def started(self, job: "Job") -> None:
        self.commands[job.id] = {key: job.options.get(key) or default for key, default in self.defaults.items()}

    def progress(self, job: "Job", progress: "Progress") -> None:
        pass

    def ended(self, outcome: "Outcome") -> None:
        commands = self.commands.pop(outcome.job_id, None)
        key = EVENTS.get(outcome.state)
        command = commands.get(key) if commands and key else None
        if command:
            thread = threading.Thread(target=_run, args=(command, outcome), name=f"dlman-hook-{outcome.job_id}")
            thread.start()
            self.threads.append(thread)

    def running(self) -> bool:
        """Whether a hook started so far has not ended yet."""
        self.threads = [thread for thread in self.threads if thread.is_alive()]
        return bool(self.threads)
