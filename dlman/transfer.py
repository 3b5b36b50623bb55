"""One download, from its first request to the published file.

``run`` retries whole attempts: a remote file that changed starts over, a server
that cannot be trusted with ranges gets one plain stream. An attempt learns what
the file is (from the resume state, or from the first request), then runs one
task per connection (``_worker``) beside a saver, then publishes the file.

The decisions live elsewhere, one place each: what an answer means in
``remote``, mirrors, pinned redirects and credentials in ``mirrors``, which
bytes each connection fetches in ``segments``, which bytes prove a source in
``overlap``; bytes move through ``receiver`` into ``storage``, which also owns
the destination lock and the final rename.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from dlman.asynctools import uninterrupted
from dlman.checksum import Checksum, file_digest, parse_checksum
from dlman.digests import WANT_HEADERS, candidates, disagreement, strongest
from dlman.errors import (
    ChecksumError,
    DestinationExistsError,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    ProtocolError,
    RemoteChangedError,
)
from dlman.mirrors import Mirror, Mirrors
from dlman.naming import choose_name, contained
from dlman.options import Headers, mask_url
from dlman.overlap import PROBE_BYTES, candidate_range, informative, overlap_before, probe_spans
from dlman.receiver import Mismatch, Receiver, Stalled
from dlman.remote import (
    REASON_BYTES,
    Action,
    Answer,
    RangeAsk,
    RemoteFile,
    Validators,
    Verdict,
    judge_first,
    judge_range,
    read_answer,
    reason_from_body,
)
from dlman.request import Requester, Retry, SourceGone
from dlman.result import DownloadResult, Progress
from dlman.retry import RetryPolicy, status_message
from dlman.saver import Saver
from dlman.segments import Segment, SegmentPlan
from dlman.state import ResumeState, StateError, source_key
from dlman.storage import PartFile, stoppable
from dlman.transport import body_reader

if TYPE_CHECKING:
    from dlman.engine import Engine
    from dlman.ratelimit import RateLimiter

log = logging.getLogger("dlman")

WRITE_BUDGET = 4 << 20         # bytes buffered for writing per download, shared by its connections
MIN_FLUSH, FLUSH_BYTES = 256 << 10, 1 << 20   # smallest and largest buffer per connection
MAX_RESTARTS = 3               # restarts after the remote file changed, before giving up
MEANINGFUL_PROGRESS = 64 << 10  # an attempt that wrote less than this still counts as a failure
UNSIZED = 1 << 62              # the end of the one segment of a body without a known size

__all__ = ["Transfer", "FLUSH_BYTES"]


class _Restart(Exception):
    """The remote file changed under us: discard partial data and start over."""


class _Fallback(Exception):
    """The server cannot be trusted with ranges: start over as one plain stream."""


class _GiveUp(Exception):
    """This connection cannot go on (retries exhausted, no mirror left); others may."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


class _RangeRefused(ProtocolError):
    """A 416 to the first request, with the total size the server claims."""

    def __init__(self, total: int) -> None:
        super().__init__(f"the server refused a range starting at 0 of a {total}-byte file (HTTP 416)")
        self.total = total


@dataclass
class _Opening:
    """An answer already in hand for a connection's first segment (the first request's body)."""

    mirror: Mirror
    response: httpx.Response
    verdict: Verdict


class Transfer:
    """Downloads one file (from one URL or several mirrors) to ``dest``."""

    def __init__(self, engine: "Engine", urls: list[str], dest: Path, *, directory: bool,
                 connections: int, headers: Headers, checksum: Checksum | None,
                 overwrite: bool, on_progress: Callable[[Progress], None] | None,
                 limiter: RateLimiter | None = None) -> None:
        self.engine = engine
        self.limiter = limiter or engine.limiter  # this download's own (within the engine's), or the engine's
        self.mirrors = Mirrors(urls, headers)
        self.requests = Requester(engine, self.mirrors)
        self.url = urls[0]
        self.name = mask_url(self.url)
        self.dest_arg = dest
        self.directory = directory
        self.connections = connections
        self.checksum = checksum
        self.verify_digest = engine.verify_digest
        self.found_digests: list[tuple[Checksum, str]] = []   # what the first answer's headers offered
        self.expected: tuple[Checksum, str] | None = None     # what the file is verified against, and why
        self.overwrite = overwrite
        self.on_progress = on_progress
        self.policy = RetryPolicy(retries=engine.retries)
        self.part: PartFile | None = None
        self.plan: SegmentPlan | None = None
        self.stream: Segment | None = None   # the one segment of a body without a known size
        self.remote: RemoteFile | None = None
        self.sources: dict[str, Validators] = {}   # validators per source key, as recorded
        self.reference: str | None = None           # the source whose answer described the file
        self.unconfirmed: set[str] = set()          # sources that will not confirm their If-Range
        self.resumed = False
        self.single_stream = False    # set after the server proved untrustworthy with ranges
        self.refused_ranges = 0       # 416 answers so far: the first restarts, the next falls back
        self.compare_existing = False  # an unsized remote file and an existing destination
        self.receivers: set[Receiver] = set()
        self.active = 0               # connections receiving a body now
        self.running = 0              # connection tasks still running
        self._verified: set[int] = set()    # mirrors proven in this attempt (by index)
        self._proven: set[int] = set()      # connections writing bytes of proven sources
        self._probe_locks: dict[int, asyncio.Lock] = {}
        self._callback_failed = False
        # large positioned writes are cheap per byte; the budget keeps memory flat with many connections
        self.flush_bytes = min(FLUSH_BYTES, max(MIN_FLUSH, WRITE_BUDGET // connections))

    @property
    def path(self) -> Path | None:
        return self.part.dest if self.part is not None else None

    # -- the whole download -----------------------------------------------------
    async def run(self) -> DownloadResult:
        changes = 0
        try:
            for _ in range(MAX_RESTARTS + 1):
                if changes:
                    await asyncio.sleep(self.policy.delay(changes, None, _rng))
                try:
                    return await self._attempt()
                except _Restart as why:
                    changes += 1
                    log.warning("%s: %s; starting over", self.name, why)
                except _Fallback as why:
                    log.warning("%s: %s; falling back to one plain stream", self.name, why)
                    self.single_stream = True
                if self.part is not None:
                    await self.part.truncate()
            raise RemoteChangedError(f"{self.name}: the remote file kept changing during the download",
                                     url=self.url, path=str(self.path))
        finally:
            if self.part is not None:
                self.part.release()

    async def _attempt(self) -> DownloadResult:
        self.plan = self.stream = self.remote = None
        self.resumed = self.compare_existing = False
        self.mirrors.new_attempt()
        self._verified.clear()
        self._proven.clear()
        if not self.directory:
            await self._own(self.dest_arg)
            if os.path.lexists(self.dest_arg) and not self.overwrite:
                skipped = await self._existing_only()
                if skipped is not None:
                    return skipped
            else:
                state = self._load_state()
                if state is not None:
                    return await self._resume(state)
        mirror, response, answer, verdict, remote = await self._first_response()
        try:
            if self.directory:
                await self._own(self._name_from(mirror, response))
                assert self.path is not None
                state = self._load_state()
                if (state is not None and (self.overwrite or not os.path.lexists(self.path))
                        and self._state_fits(state, response, remote)):
                    await response.aclose()
                    return await self._resume(state)
            skipped = await self._check_existing(remote)
            if skipped is not None:
                await response.aclose()
                return skipped
            assert self.part is not None
            await self.part.truncate()
        except BaseException:
            await response.aclose()
            raise
        return await self._fresh(_Opening(mirror, response, verdict), remote)

    async def _own(self, path: Path) -> None:
        """Hold the destination's lock (one transfer per file, across processes)."""
        if self.part is not None and self.part.dest == path:
            return
        if self.part is not None:
            self.part.release()
            self.part = None
        part = PartFile(path)
        await part.lock()
        self.part = part

    async def _fresh(self, opening: _Opening, remote: RemoteFile) -> DownloadResult:
        """A download from byte zero, the first answer's body feeding the first segment."""
        self.remote = remote
        target = str(opening.response.url)
        opening.mirror.target = target
        self.reference = source_key(target)
        self.sources = {self.reference: remote.validators}
        first: Segment | None
        if remote.size is None:
            self.stream = first = Segment(0, UNSIZED, 0)
        else:
            self.plan = SegmentPlan(remote.size, min_segment=self.engine.min_segment)
            first = self.plan.segments[0] if self.plan.segments else None
            if first is not None:
                first.busy = True
            if self._ranged():
                count = self.connections
                self.plan.split_evenly(count)
                if first is not None and count > 1:
                    # The first request asked for bytes=0-, so its body runs past its segment:
                    # a pacing server delivers the segment's last bytes only with its next
                    # burst. A half share frees that connection early for a closed range.
                    self.plan.split(first)
        log.info("%s: downloading %s bytes to %s", self.name,
                 remote.size if remote.size is not None else "an unknown number of", self.path)
        return await self._run_connections(opening, first)

    def _ranged(self) -> bool:
        return self.remote is not None and self.remote.ranges and not self.single_stream

    # -- resume -------------------------------------------------------------------
    def _load_state(self) -> ResumeState | None:
        """The resume state, if there is one worth trusting; anything doubtful is a warning."""
        part = self.part
        assert part is not None
        if self.single_stream:
            return None
        try:
            raw = part.read_state()
            if raw is None:
                return None
            state = ResumeState.decode(raw)
        except StateError as why:
            log.warning("%s: ignoring unusable resume state (%s); starting over", part.state_file, why)
            return None
        claimed_end = max((b for a, b in state.written()), default=0)
        if part.size_on_disk() < claimed_end:
            log.warning("%s: resume state claims more than is on disk; starting over", part.state_file)
            return None
        if not state.missing and not any(source_key(m.url) in state.sources for m in self.mirrors.all):
            # nothing left to ask for, so nothing would prove that these URLs serve those bytes
            log.warning("%s: the data is complete but was fetched from other URLs; starting over",
                        part.state_file)
            return None
        return state

    def _state_fits(self, state: ResumeState, response: httpx.Response, remote: RemoteFile) -> bool:
        """In directory mode: whether the first answer describes the file the state was saved for."""
        if not remote.ranges or remote.size != state.size:
            return False
        known = state.sources.get(source_key(str(response.url)))
        return known is None or not known.contradicts(remote.validators)

    async def _resume(self, state: ResumeState) -> DownloadResult:
        """Continue from the state: ask only for the missing bytes, each source proven first."""
        self.resumed = True
        if self.checksum is not None:
            self.expected = (self.checksum, "given")
        elif self.verify_digest and state.digest:
            self.expected = (parse_checksum(state.digest), state.digest_source or "digest")
        self.sources = dict(state.sources)
        self.reference = state.reference
        validators = state.sources.get(state.reference or "", Validators())
        self.remote = RemoteFile(state.size, True, validators, state.encoding)
        self.plan = SegmentPlan(state.size, state.missing, min_segment=self.engine.min_segment)
        self.plan.split_evenly(self.connections)
        log.info("%s: resuming %s at %d of %d bytes", self.name, self.path, self.plan.downloaded, state.size)
        return await self._run_connections(None, None)

    # -- the first request -----------------------------------------------------------
    async def _first_response(self, first_range: str | None = "bytes=0-"
                              ) -> tuple[Mirror, httpx.Response, Answer, Verdict, RemoteFile]:
        """The first answer, from the first mirror that gives one (the others are dropped)."""
        if self.single_stream:
            first_range = None
        while True:
            mirror = self.mirrors.pick(0)
            if mirror is None:
                raise self._last_failure()
            try:
                response, answer, verdict, remote = await self._first_from(mirror, first_range)
                return mirror, response, answer, verdict, remote
            except SourceGone as gone:
                self._drop(mirror, gone.error)

    async def _first_from(self, mirror: Mirror, first_range: str | None
                          ) -> tuple[httpx.Response, Answer, Verdict, RemoteFile]:
        """GET with ``first_range`` (none once ranges proved untrustworthy), retried."""
        failures = 0
        while True:
            try:
                ask = {"Range": first_range} if first_range else {}
                if self.verify_digest:
                    ask.update(WANT_HEADERS)
                hops: list[httpx.Headers] = []
                response = await self.requests.get(mirror.url, ask, hops)
                answer = self._answer(response)
                verdict, remote = judge_first(answer, ranged=first_range is not None)
                if verdict.action is Action.ACCEPT:
                    assert remote is not None
                    whole = answer.status == 200 and answer.encoding is None
                    self.found_digests = [found for headers in hops for found in candidates(headers, whole_body=False)]
                    self.found_digests += candidates(response.headers, whole_body=whole)
                    return response, answer, verdict, remote
                try:
                    if verdict.action is Action.REFUSED:
                        if verdict.total == 0:
                            first_range = None  # an empty file: ask for it whole
                            continue
                        if verdict.total is not None:
                            raise _RangeRefused(verdict.total)
                    if verdict.action is Action.FALLBACK:
                        raise _Fallback(verdict.why)
                    await self._act(verdict, mirror, response, answer, pinned=False)
                    raise SourceGone(ProtocolError(f"{mask_url(mirror.url)}: {verdict.why}", url=mirror.url))
                finally:
                    await response.aclose()
            except Retry as why:
                failures += 1
                if self.policy.gives_up(failures):
                    raise SourceGone(self._gave_up(mirror, failures, why)) from None
                await self._pause_before_retry(failures, why, mirror)

    def _name_from(self, mirror: Mirror, response: httpx.Response) -> Path:
        name = choose_name(mirror.url, response.headers.get("content-disposition"))
        return contained(self.dest_arg, name)

    async def _existing_only(self) -> DownloadResult | None:
        """The destination exists: ask for one byte, enough to learn the remote size."""
        try:
            _mirror, response, _answer, _verdict, remote = await self._first_response("bytes=0-0")
        except _RangeRefused as refused:  # "nothing to send you": the size is all we need
            remote = RemoteFile(refused.total, True, Validators(), None)
        else:
            await response.aclose()
        return await self._check_existing(remote)

    async def _check_existing(self, remote: RemoteFile) -> DownloadResult | None:
        """SPEC rule 9: never clobber silently; an identical file is already done.

        None means "download": no file is there, ``overwrite`` was given, or the
        remote size is unknown (then the download is compared with the file at the end).
        """
        path = self.path
        assert path is not None
        self._choose_checksum()
        if self.overwrite or not os.path.lexists(path):
            return None
        try:
            info = path.stat()
        except OSError:
            raise DestinationExistsError(f"{path} is a symbolic link to nothing; pass --overwrite to replace it",
                                         url=self.url, path=str(path)) from None
        if stat.S_ISDIR(info.st_mode):
            raise DestinationExistsError(f"{path} is a directory", url=self.url, path=str(path))
        if remote.size is None:
            self.compare_existing = True
            return None
        size = info.st_size
        expected = self.expected[0] if self.expected else None
        if size == remote.size and (expected is None or await stoppable(functools.partial(
                file_digest, str(path), expected.algorithm)) == expected.hexdigest):
            log.info("%s: %s is already complete", self.name, path)
            return self._result(path, size, skipped=True)
        raise DestinationExistsError(
            f"{path} already exists and differs from {self.name}; pass --overwrite to replace it",
            url=self.url, path=str(path))

    def _choose_checksum(self) -> None:
        """What the file will be verified against: the user's checksum, else the server's strongest
        digest (``verify_digest``); a server that contradicts the user's checksum is an error."""
        if self.checksum is not None:
            why = disagreement(self.checksum, self.found_digests)
            if why is not None:
                raise ChecksumError(f"{self.name}: {why}", url=self.url, path=str(self.path))
            self.expected = (self.checksum, "given")
        elif self.verify_digest:
            self.expected = strongest(self.found_digests)
            if self.expected is not None:
                log.info("%s: the server's %s gives the file's %s", self.name, self.expected[1],
                         self.expected[0].algorithm)

    def _result(self, path: Path, size: int, *, skipped: bool = False) -> DownloadResult:
        checksum, source = self.expected if self.expected else (None, None)
        return DownloadResult(path, size, self.url, skipped=skipped,
                              checksum=str(checksum) if checksum else None, checksum_source=source)

    # -- connections ------------------------------------------------------------------
    async def _run_connections(self, opening: _Opening | None, first: Segment | None) -> DownloadResult:
        """Run the connections and the saver to the end, then publish the file."""
        part = self.part
        assert part is not None
        tasks: list[asyncio.Task[None]] = []
        saver = Saver(self._report, self._save, self.engine.save_interval)
        try:
            if self._ranged() and self.plan is not None:
                tasks.append(asyncio.create_task(self._worker(0, opening, first)))
                tasks.extend(asyncio.create_task(self._worker(i, None, None))
                             for i in range(1, self.plan.useful_connections(self.connections)))
            else:
                assert opening is not None
                tasks.append(asyncio.create_task(self._stream_whole(opening, first)))
            self.running = len(tasks)
            await _wait_all(tasks, saver.task)
            await saver.stop()
            if self.plan is not None and not self.plan.complete:
                raise NetworkError(f"{self.name}: every connection stopped before the end of the file",
                                   url=self.url, path=str(self.path))
        except BaseException:
            await uninterrupted(self._stop(tasks, opening, saver))
            raise
        return await self._publish()

    async def _stop(self, tasks: list[asyncio.Task[None]], opening: _Opening | None, saver: Saver) -> None:
        """Stop every connection (each writes what it holds), then the saver, then save once more."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if opening is not None:
            await opening.response.aclose()
        await saver.stop()
        await self._save_quietly()
        self._report()

    async def _publish(self) -> DownloadResult:
        part, path = self.part, self.path
        assert part is not None and path is not None
        size = self.plan.size if self.plan is not None else (self.stream.pos if self.stream else 0)
        if self.compare_existing:
            return await self._compare_with_existing(size)
        checksum, source = self.expected if self.expected else (None, "given")
        try:
            size = await part.finish(size, checksum, self.name, overwrite=self.overwrite, source=source)
        except BaseException as exc:
            if not isinstance(exc, ChecksumError) and not part.published:  # the data is kept: so is its state
                await self._save_quietly()
            raise
        self._report()
        log.info("%s: saved %s (%d bytes)", self.name, path, size)
        return self._result(path, size)

    async def _compare_with_existing(self, size: int) -> DownloadResult:
        """An unsized file whose destination existed: done if identical, else refused."""
        part, path = self.part, self.path
        assert part is not None and path is not None
        same = await part.same_as(path)
        await part.delete()
        if not same:
            raise DestinationExistsError(
                f"{path} already exists and differs from {self.name}; pass --overwrite to replace it",
                url=self.url, path=str(path))
        log.info("%s: %s is already complete", self.name, path)
        return self._result(path, size, skipped=True)

    async def _worker(self, index: int, opening: _Opening | None, segment: Segment | None) -> None:
        """One connection: fill segments until none is left to take or split.

        A connection that cannot go on (its retries are spent, or no mirror will
        serve it) gives its segment back and stops while others still run; only
        the last one fails the download.
        """
        plan = self.plan
        assert plan is not None
        mirror = opening.mirror if opening is not None else self.mirrors.pick(index)
        try:
            while True:
                if segment is None:
                    segment = plan.next_work()
                    if segment is None:
                        return
                try:
                    mirror = await self._fill(index, segment, mirror, opening)
                except _GiveUp as failure:
                    plan.give_back(segment)
                    segment = None
                    if self._others_running():
                        log.warning("%s; this connection stops, the others go on", failure)
                        return
                    raise failure.error from None
                finally:
                    opening = None
                    if segment is not None:
                        plan.release(segment)
                segment = None
        finally:
            self.running -= 1
            self._proven.discard(index)

    def _others_running(self) -> bool:
        """Whether a connection that gives up may leave its work to others (SPEC rule 6)."""
        return self.running > 1

    async def _fill(self, index: int, segment: Segment, mirror: Mirror | None,
                    opening: _Opening | None) -> Mirror | None:
        """Fill one segment, retrying from the last byte written; another mirror takes over
        when one is dropped. Returns the mirror it ended with."""
        failures = 0
        while not segment.done:
            if mirror is None or mirror.dead:
                self._proven.discard(index)
                mirror = self.mirrors.pick(index)
                if mirror is None:
                    raise _GiveUp(self._last_failure())
            before = segment.pos
            try:
                await self._verify(mirror, index)
                if opening is None:
                    response, verdict, expect = await self._ask(mirror, segment)
                else:
                    response, verdict, expect = opening.response, opening.verdict, b""
                    opening = None
                await self._receive(segment, mirror, response, verdict, expect)
                if not segment.done and segment.pos == before:
                    raise Retry("the server sent no bytes for the requested range")
            except Retry as why:
                failures = (0 if segment.pos - before >= MEANINGFUL_PROGRESS else failures) + 1
                if self.policy.gives_up(failures):
                    error = self._gave_up(mirror, failures, why)
                    if mirror.worked or len(self.mirrors.alive()) == 1:
                        raise _GiveUp(error) from None
                    self._drop(mirror, error)  # it never served a byte: the others may
                    failures = 0
                    continue
                await self._pause_before_retry(failures, why, mirror)
            except SourceGone as gone:
                self._drop(mirror, gone.error)
                failures = 0
            finally:
                if opening is not None:
                    await opening.response.aclose()
                    opening = None
        return mirror

    async def _ask(self, mirror: Mirror, segment: Segment) -> tuple[httpx.Response, Verdict, bytes]:
        """Ask ``mirror`` for the rest of ``segment`` and judge the answer before any byte is written.

        With a validator for the source, the request carries If-Range; without
        one it starts a little before the segment's position, and those bytes
        are compared with the disk as they arrive (SPEC rule 5).
        """
        assert self.plan is not None and self.remote is not None and self.part is not None
        url = mirror.ask
        pinned = mirror.target is not None
        key = source_key(url)
        known = self.sources.get(key)
        if_range = known.if_range() if known is not None and key not in self.unconfirmed else None
        overlap = 0 if if_range else overlap_before(segment.pos, self.plan.written())
        start = segment.pos - overlap
        expect = await self.part.read(start, overlap) if overlap else b""
        headers = {"Range": f"bytes={start}-{segment.end - 1}"}
        if if_range:
            headers["If-Range"] = if_range
        response = await self.requests.get(url, headers)
        try:
            final = str(response.url)
            if mirror.target is None:
                mirror.target = final
            final_key = source_key(final)
            answer = self._answer(response)
            verdict = judge_range(answer, RangeAsk(start, segment.end, if_range, segment.pos), self.remote,
                                  self.sources.get(final_key))
            await self._act(verdict, mirror, response, answer, pinned=pinned, key=final_key)
            self.sources.setdefault(final_key, answer.validators)
            return response, verdict, expect
        except BaseException:
            await response.aclose()
            raise

    async def _receive(self, segment: Segment, mirror: Mirror, response: httpx.Response, verdict: Verdict,
                       expect: bytes) -> int:
        """Stream an accepted body into ``segment``; returns how many ``expect`` bytes it confirmed."""
        assert self.part is not None
        receiver = Receiver(self.part, segment, flush_bytes=self.flush_bytes, timeout=self.engine.timeout,
                            limiter=self.limiter)
        before = segment.pos
        segment.reach = verdict.end
        self.receivers.add(receiver)
        self.active += 1
        try:
            return await receiver.receive(_body(response), verdict.end, expect, body_reader(response))
        except httpx.TransportError as exc:
            raise Retry(f"connection lost after {segment.pos - before} bytes: {exc!r}") from None
        except Stalled as exc:
            raise Retry(str(exc)) from None
        except Mismatch:
            self._changed(mirror, source_key(str(response.url)),
                          "the remote file changed (the bytes before the resume point differ)")
            raise  # not reached: _changed always raises
        finally:
            self.active -= 1
            self.receivers.discard(receiver)
            segment.reach = None
            if segment.pos > before:
                mirror.worked = True
            await response.aclose()

    async def _stream_whole(self, opening: _Opening, segment: Segment | None) -> None:
        """One stream without usable ranges: after a failure it starts again from byte zero."""
        expected = self.plan.size if self.plan is not None else None
        if segment is None:  # an empty file: nothing to stream
            await opening.response.aclose()
            return
        mirror, response, verdict = opening.mirror, opening.response, opening.verdict
        failures = 0
        while True:
            try:
                await self._receive(segment, mirror, response, verdict, b"")
                if not _ended_short(segment, expected):
                    return
                raise Retry(f"the body ended after {segment.pos} of {expected} bytes")
            except Retry as why:
                failures = (0 if segment.pos >= MEANINGFUL_PROGRESS else failures) + 1
                if self.policy.gives_up(failures):
                    raise self._gave_up(mirror, failures, why) from None
                await self._pause_before_retry(failures, why, mirror)
            segment.pos = segment.received = 0
            mirror, response, _answer, verdict, remote = await self._first_response()
            if remote.size != expected:
                await response.aclose()
                raise _Restart("the remote size changed")

    # -- proving a source --------------------------------------------------------------
    async def _verify(self, mirror: Mirror, index: int) -> None:
        """Before the first byte from a source not yet proven: compare a stretch already on disk.

        The source that described the file in this attempt is the file; one with
        a validator for If-Range proves itself on every request. Any other (a
        mirror, a redirect to a server not seen before, a resume without
        validators) must first serve bytes identical to those on disk.
        Connection ``index`` counts as writing proven bytes from then on.
        """
        if mirror.index not in self._verified:
            lock = self._probe_locks.setdefault(mirror.index, asyncio.Lock())
            async with lock:
                if mirror.index not in self._verified:
                    key = source_key(mirror.ask)
                    known = self.sources.get(key)
                    trusted = key == self.reference and not self.resumed
                    protected = (known is not None and known.if_range() is not None
                                 and key not in self.unconfirmed)
                    if not (trusted or protected):
                        await self._probe(mirror, index)
                    self._verified.add(mirror.index)
        self._proven.add(index)

    async def _probe(self, mirror: Mirror, index: int) -> None:
        """Compare bytes the mirror serves with bytes on disk that can tell two files apart.

        It waits for such bytes while another connection writes proven ones. With
        none left, it compares what there is; with nothing on disk at all, the
        mirror's answers define the file (it becomes the reference).
        """
        assert self.plan is not None and self.part is not None and self.remote is not None
        wanted = min(PROBE_BYTES, self.plan.size)
        while True:
            written = self.plan.written()
            span, expect = None, b""
            for candidate in probe_spans(written):
                data = await self.part.read(*candidate_range(candidate))
                if informative(data) and len(data) >= wanted:
                    span, expect = candidate, data
                    break
            if span is not None:
                break
            if not self._proven - {index}:  # nobody else writes proven bytes: do with what there is
                if not written:
                    self.reference = source_key(mirror.ask)
                    log.info("%s: %s defines the file (nothing on disk to compare it with)", self.name,
                             mask_url(mirror.ask))
                    return
                span = probe_spans(written)[0]
                expect = await self.part.read(*candidate_range(span))
                break
            await asyncio.sleep(0.05)  # proven bytes are on their way
        start, end = span
        log.info("%s: checking %s against bytes %d-%d on disk", self.name, mask_url(mirror.ask), start, end - 1)
        response = await self.requests.get(mirror.ask, {"Range": f"bytes={start}-{end - 1}"})
        try:
            final = str(response.url)
            if mirror.target is None:
                mirror.target = final
            key = source_key(final)
            answer = self._answer(response)
            verdict = judge_range(answer, RangeAsk(start, end), self.remote, self.sources.get(key))
            await self._act(verdict, mirror, response, answer, pinned=False, key=key)
            probe = Segment(end, end, end)
            confirmed = await self._receive(probe, mirror, response, verdict, expect)
        except BaseException:
            await response.aclose()
            raise
        if confirmed < len(expect):
            raise Retry("the answer ended before the bytes to compare")
        self.sources.setdefault(key, answer.validators)

    # -- what an answer means --------------------------------------------------------------
    @staticmethod
    def _answer(response: httpx.Response) -> Answer:
        return read_answer(response.status_code, response.headers, response.reason_phrase)

    async def _act(self, verdict: Verdict, mirror: Mirror, response: httpx.Response, answer: Answer, *,
                   pinned: bool, key: str | None = None) -> None:
        """Return for an accepted answer; raise what the transfer does about any other."""
        action = verdict.action
        if action is Action.ACCEPT:
            return
        if action is Action.RETRY:
            raise Retry(verdict.why, verdict.after)
        if action is Action.UNCONFIRMED:  # the source must prove itself by its bytes from now on
            self.unconfirmed.add(key or source_key(mirror.ask))
            self._verified.discard(mirror.index)
            raise Retry(verdict.why, 0.0)
        if action is Action.REFUSED:
            self.refused_ranges += 1
            if self.refused_ranges > 1:
                raise _Fallback(verdict.why)
            raise _Restart(verdict.why)
        if action is Action.FALLBACK:
            raise _Fallback(verdict.why)
        if action is Action.CHANGED:
            self._changed(mirror, key or source_key(mirror.ask), verdict.why)
        detail = await _detail(response, self.engine.timeout)
        message = status_message(verdict.status, answer.reason, detail)
        if action is Action.GONE and pinned and mirror.target != mirror.url:
            mirror.target = None  # the pinned URL expired or moved: follow the original again,
            self._verified.discard(mirror.index)  # to a server that must prove itself first
            raise Retry(f"{message} from {mask_url(str(response.url))}; following {mask_url(mirror.url)} again",
                         0.0)
        if verdict.status in (401, 403) and mirror.worked:
            message += "; the URL has probably expired (the partial data is kept for a resume)"
        raise SourceGone(HTTPStatusError(f"{mask_url(mirror.url)}: {message}", status=verdict.status,
                                          url=mirror.url))

    def _changed(self, mirror: Mirror, key: str, why: str) -> None:
        """A source serves another version: the file itself changed, or one mirror is stale."""
        if key == self.reference or not any(m is not mirror for m in self.mirrors.alive()):
            raise _Restart(why)
        raise SourceGone(ProtocolError(f"{mask_url(mirror.url)}: {why}; this mirror is dropped",
                                        url=mirror.url))

    def _drop(self, mirror: Mirror, error: DownloadError) -> None:
        if mirror.dead:
            return
        self.mirrors.drop(mirror, error)
        if self.mirrors.alive():
            log.warning("%s; going on with the other mirrors", error)

    def _last_failure(self) -> DownloadError:
        failures = [m.failure for m in self.mirrors.all if isinstance(m.failure, DownloadError)]
        if failures:
            return failures[-1]
        return NetworkError(f"{self.name}: no mirror left to download from", url=self.url)

    def _gave_up(self, mirror: Mirror, failures: int, why: Exception) -> NetworkError:
        url = mask_url(mirror.url)
        return NetworkError(f"{url}: giving up after {failures} failed attempts ({why})", url=mirror.url)

    async def _pause_before_retry(self, failures: int, why: Retry, mirror: Mirror) -> None:
        delay = self.policy.delay(failures, why.after, _rng)
        log.info("%s: %s; retry %d of %d in %.1fs", mask_url(mirror.url), why, failures,
                 self.policy.retries, delay)
        await asyncio.sleep(delay)

    # -- state and progress ------------------------------------------------------------
    async def _save(self) -> None:
        """Persist what is on disk (buffers flushed first); only a ranged download can resume."""
        if self.plan is None or self.part is None or self.remote is None or not self._ranged():
            return
        for receiver in list(self.receivers):
            await receiver.flush()
        server = self.expected if self.expected and self.expected[1] != "given" else None
        state = ResumeState(self.name, self.plan.size, self.plan.missing(), dict(self.sources), self.reference,
                            str(server[0]) if server else None, server[1] if server else None,
                            self.remote.encoding)
        await self.part.save_state(state)

    async def _save_quietly(self) -> None:
        """The last save of a download that is stopping: a failure must not hide why it stopped."""
        try:
            await uninterrupted(self._save())
        except DownloadError as exc:  # the old state still holds
            log.warning("%s", exc)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        if self.plan is not None:
            downloaded, total = self.plan.received, self.plan.size
        else:
            downloaded, total = (self.stream.pos if self.stream else 0), None
        try:
            self.on_progress(Progress(self.path, downloaded, total, self.active))
        except Exception:  # a broken callback must not stop the download, nor go unnoticed
            if not self._callback_failed:
                self._callback_failed = True
                log.warning("%s: the progress callback failed; the download goes on", self.name,
                            exc_info=True)


# -- helpers ----------------------------------------------------------------------------
_rng = random.Random()


def _ended_short(segment: Segment, expected: int | None) -> bool:
    """A body that ended before the size it announced is never taken as complete (SPEC rule 6)."""
    return expected is not None and not segment.done


async def _wait_all(tasks: list[asyncio.Task[None]], saver: asyncio.Task[None]) -> None:
    """Wait for every connection; the first exception (the saver's too) is raised."""
    pending: set[asyncio.Task[None]] = {*tasks, saver}
    while any(not task.done() for task in tasks):
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as served. A response read already (an ``httpx.MockTransport`` answer built with
    ``content=``) has only its content left to give."""
    if response.is_stream_consumed:
        return _once(response.content)
    return response.aiter_raw()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    if content:
        yield content


async def _detail(response: httpx.Response, timeout: float) -> str | None:
    """The server's own words in a short error body (S3: ``Request has expired``)."""
    body = bytearray()

    async def read() -> None:
        async for chunk in _body(response):
            body.extend(chunk)
            if len(body) >= REASON_BYTES:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except (httpx.HTTPError, asyncio.TimeoutError, httpx.StreamError):
        pass
    return reason_from_body(response.headers.get("content-type"), bytes(body[:REASON_BYTES]),
                            response.status_code, response.reason_phrase)
