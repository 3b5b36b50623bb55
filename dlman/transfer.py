"""One download, from its first request to the renamed file.

A ``Transfer`` owns a ``PartFile`` and a ``SegmentPlan`` and runs one asyncio task
per connection. The engine-wide pieces (HTTP client, rate limiter, per-host
connection cap) come from the ``Engine``; the decisions (names, ranges,
retries, state) come from the pure modules.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from dlman.checksum import Checksum, file_digest
from dlman.errors import (
    DestinationExistsError,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    ProtocolError,
    RemoteChangedError,
)
from dlman.httpheaders import (
    ContentRange,
    http_date_valid,
    parse_content_range,
    parse_retry_after,
    strong_etag,
)
from dlman.naming import choose_name, contained
from dlman.options import Headers, mask_url
from dlman.result import DownloadResult, Progress
from dlman.retry import RetryPolicy, is_retryable_status, status_message
from dlman.segments import Segment, SegmentPlan
from dlman.state import ResumeState, StateError
from dlman.storage import PartFile

if TYPE_CHECKING:
    from dlman.engine import Engine

log = logging.getLogger("dlman")

WRITE_BUDGET = 4 << 20         # bytes buffered for writing per download, shared by its connections
MIN_FLUSH, FLUSH_BYTES = 256 << 10, 1 << 20   # smallest and largest buffer per connection
OVERLAP_BYTES = 16 << 10       # re-fetched and compared on a resume without validators
MAX_RESTARTS = 3               # restarts after the remote file changed, before giving up
PROGRESS_INTERVAL = 0.2
LOW_SPEED_BYTES = 1024         # fewer bytes than this in `timeout` seconds is a stall


class _Restart(Exception):
    """The remote file changed under us: discard partial data and start over."""


class _Fallback(Exception):
    """The server cannot be trusted with ranges: start over as one plain stream."""


class _RangeRefused(ProtocolError):
    """A 416 to the first request, with the total size the server claims."""

    def __init__(self, total: int) -> None:
        super().__init__(f"the server refused a range starting at 0 of a {total}-byte file (HTTP 416)")
        self.total = total


class _Retryable(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's wish, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Remote:
    """What the first answer told us about the remote file."""

    size: int | None
    ranges: bool
    etag: str | None
    last_modified: str | None
    encoding: str | None
    mirror_validators: dict[str, str] = field(default_factory=dict)

    def if_range(self) -> str | None:
        return self.etag or self.last_modified


class Transfer:
    """Downloads one file (from one URL or several mirrors) to ``dest``."""

    def __init__(self, engine: "Engine", urls: list[str], dest: Path, *, directory: bool,
                 connections: int, headers: Headers, checksum: Checksum | None,
                 overwrite: bool, on_progress: Callable[[Progress], None] | None) -> None:
        self.engine = engine
        self.urls = urls
        self.url = urls[0]
        self.dest_arg = dest
        self.directory = directory
        self.connections = connections
        self.headers = headers
        self.checksum = checksum
        self.overwrite = overwrite
        self.on_progress = on_progress
        self.policy = RetryPolicy(retries=engine.retries)
        self.path: Path | None = None
        self.plan: SegmentPlan | None = None
        self.unsized: Segment | None = None   # the one stream of a download without a known size
        self.active = 0
        self.single_stream = False    # set after the server proved untrustworthy with ranges
        self.refused_ranges = 0       # 416 answers so far: the first restarts, the next falls back
        self.dead_mirrors: set[str] = set()
        # large positioned writes are cheap per byte; the budget keeps memory flat with many connections
        self.flush_bytes = min(FLUSH_BYTES, max(MIN_FLUSH, WRITE_BUDGET // connections))

    # -- the whole download -----------------------------------------------------
    async def run(self) -> DownloadResult:
        for _ in range(MAX_RESTARTS + 1):
            try:
                return await self._attempt()
            except _Restart as why:
                log.warning("%s: %s; starting over", mask_url(self.url), why)
            except _Fallback as why:
                log.warning("%s: %s; falling back to one plain stream", mask_url(self.url), why)
                self.single_stream = True
            if self.path is not None:
                await PartFile(self.path).discard()
        raise RemoteChangedError(f"{mask_url(self.url)}: the remote file kept changing during the download",
                                 url=self.url, path=str(self.path))

    async def _attempt(self) -> DownloadResult:
        self.plan, self.unsized = None, None
        directory_mode = self.directory
        if not directory_mode:
            self.path = self.dest_arg
            if self.path.exists() and not self.overwrite:
                return await self._existing_only()
            resumed = await self._try_resume()
            if resumed is not None:
                return resumed
        response = await self._first_response()
        try:
            remote = self._describe(response)
            if directory_mode:
                self.path = self._name_from(response)
                state = self._resumable_state(remote)
                if state is not None:
                    await response.aclose()
                    resumed = await self._try_resume(state)
                    if resumed is not None:
                        return resumed
                    response = await self._first_response()
                    remote = self._describe(response)
            assert self.path is not None
            skipped = await self._check_existing(remote)
            if skipped is not None:
                await response.aclose()
                return skipped
        except BaseException:
            await response.aclose()
            raise
        part = PartFile(self.path)
        try:
            await part.open(truncate=True)
        except BaseException:
            await response.aclose()
            raise
        if remote.size is not None:
            self.plan = SegmentPlan(remote.size, min_segment=self.engine.min_segment)
            first = self.plan.segments[0] if self.plan.segments else None
            if first is not None:
                first.busy = True
            if remote.ranges:
                count = self._connections_for(remote)
                self.plan.split_evenly(count)
                if first is not None and count > 1:
                    # The first request asked for bytes=0-, so its body runs past its segment:
                    # a pacing server delivers the segment's last bytes only with its next
                    # burst. A half share frees that connection early for a closed range.
                    self.plan.split(first)
        else:
            first = None
        log.info("%s: downloading %s bytes to %s", mask_url(self.url),
                 remote.size if remote.size is not None else "an unknown number of", self.path)
        return await self._transfer(part, remote, response, first)

    def _connections_for(self, remote: _Remote) -> int:
        return 1 if (self.single_stream or not remote.ranges) else self.connections

    # -- resume -------------------------------------------------------------------
    def _load_state(self) -> ResumeState | None:
        assert self.path is not None
        part = PartFile(self.path)
        raw = part.read_state()
        if raw is None:
            return None
        try:
            state = ResumeState.decode(raw)
        except StateError as why:
            log.warning("%s: ignoring unusable resume state (%s); starting over", part.state_file, why)
            return None
        claimed_end = max((b for a, b in state.written()), default=0)
        if (not state.ranges or state.url not in map(mask_url, self.urls)
                or part.size_on_disk() < claimed_end):
            log.warning("%s: resume state does not match; starting over", part.state_file)
            return None
        return state

    def _resumable_state(self, remote: _Remote) -> ResumeState | None:
        """In directory mode: a state worth resuming from, given the first answer's validators."""
        state = self._load_state()
        if state is None or self.path is None or self.path.exists():
            return None
        if remote.size != state.size or not remote.ranges:
            return None
        if state.etag and remote.etag != state.etag:
            return None
        if not state.etag and state.last_modified and remote.last_modified != state.last_modified:
            return None
        return state

    async def _try_resume(self, state: ResumeState | None = None) -> DownloadResult | None:
        """Continue from ``NAME.part.state`` (read here unless given); None when nothing to resume."""
        assert self.path is not None
        if self.path.exists() or self.single_stream:
            return None
        state = state or self._load_state()
        if state is None:
            return None
        assert state.size is not None
        remote = _Remote(state.size, True, state.etag, state.last_modified, None)
        self.plan = SegmentPlan(state.size, state.missing, min_segment=self.engine.min_segment)
        if not remote.if_range():
            previous_end = 0
            for segment in self.plan.segments:
                if segment.start > previous_end:
                    segment.check_from = max(previous_end, segment.start - OVERLAP_BYTES)
                previous_end = segment.end
        self.plan.split_evenly(self.connections)
        log.info("%s: resuming %s at %d of %d bytes", mask_url(self.url), self.path,
                 self.plan.downloaded, state.size)
        part = PartFile(self.path)
        await part.open(truncate=False)
        return await self._transfer(part, remote, None, None)

    # -- the first request -----------------------------------------------------------
    async def _first_response(self, first_range: str = "bytes=0-") -> httpx.Response:
        """The first answer, from the first mirror that gives one (the others are dropped)."""
        while True:
            try:
                return await self._first_response_from_primary(first_range)
            except (HTTPStatusError, NetworkError) as failure:
                self.url = self._other_mirror(self.url, failure, 0)

    async def _first_response_from_primary(self, first_range: str) -> httpx.Response:
        """GET with ``Range: bytes=0-`` (no Range once ranges proved untrustworthy), retried."""
        failures = 0
        while True:
            try:
                headers = {} if self.single_stream else {"Range": first_range}
                response = await self._send_checked(self.url, headers)
                if response.status_code in (200, 206):
                    return response
                if response.status_code == 416 and not self.single_stream:
                    await response.aclose()
                    total = parse_content_range(response.headers.get("content-range"))
                    if total is not None and total.total == 0:
                        self.single_stream = True  # an empty file: ask for it whole
                        continue
                    if total is not None and total.total is not None:
                        raise _RangeRefused(total.total)
                    raise ProtocolError(f"{mask_url(self.url)}: the server refused a range starting at 0",
                                        url=self.url)
                await response.aclose()
                self._raise_for_status(response)
            except _Retryable as why:
                failures += 1
                await self._backoff(failures, why)

    def _describe(self, response: httpx.Response) -> _Remote:
        encoding = response.headers.get("content-encoding")
        encoding = None if encoding in (None, "", "identity") else encoding
        etag = strong_etag(response.headers.get("etag"))
        modified = http_date_valid(response.headers.get("last-modified"))
        if response.status_code == 206:
            content_range = parse_content_range(response.headers.get("content-range"))
            if content_range is None or content_range.start != 0 or content_range.total is None:
                if not self.single_stream:
                    raise _Fallback(f"invalid Content-Range {response.headers.get('content-range')!r} "
                                    "for bytes=0-")
                raise ProtocolError(
                    f"{mask_url(self.url)}: the server answered a range with an invalid Content-Range "
                    f"({response.headers.get('content-range')!r})", url=self.url)
            return _Remote(content_range.total, True, etag, modified, encoding)
        size = _content_length(response)
        if "chunked" in response.headers.get("transfer-encoding", "").lower():
            size = None
        return _Remote(size, False, etag, modified, encoding)

    def _name_from(self, response: httpx.Response) -> Path:
        name = choose_name(self.url, response.headers.get("content-disposition"))
        directory = self.dest_arg
        return contained(directory, name)

    async def _existing_only(self) -> DownloadResult:
        """The destination exists: ask for one byte, enough to learn the remote size."""
        try:
            response = await self._first_response("bytes=0-0")
        except _RangeRefused as refused:  # "nothing to send you": the size is all we need
            remote = _Remote(refused.total, True, None, None, None)
        else:
            try:
                remote = self._describe(response)
            finally:
                await response.aclose()
        skipped = await self._check_existing(remote)
        assert skipped is not None  # _check_existing raises unless the file is complete
        return skipped

    async def _check_existing(self, remote: _Remote) -> DownloadResult | None:
        """SPEC rule 9: never clobber silently; an identical file is already done."""
        assert self.path is not None
        if self.overwrite or not self.path.exists():
            return None
        if self.path.is_dir():
            raise DestinationExistsError(f"{self.path} is a directory", url=self.url, path=str(self.path))
        size = self.path.stat().st_size
        if remote.size is not None and size == remote.size:
            if self.checksum is None or await asyncio.to_thread(
                    file_digest, str(self.path), self.checksum.algorithm) == self.checksum.hexdigest:
                log.info("%s: %s is already complete", mask_url(self.url), self.path)
                return DownloadResult(self.path, size, self.url, skipped=True)
        raise DestinationExistsError(
            f"{self.path} already exists and differs from {mask_url(self.url)}; pass --overwrite to replace it",
            url=self.url, path=str(self.path))

    # -- moving bytes -----------------------------------------------------------------
    async def _transfer(self, part: PartFile, remote: _Remote, response: httpx.Response | None,
                        first: Segment | None) -> DownloadResult:
        """Run the connections to completion, saving state as they go; then finish the file."""
        assert self.path is not None
        workers: list[asyncio.Task[None]] = []
        saver = asyncio.create_task(self._save_loop(part, remote))
        try:
            if self.plan is None:
                assert response is not None
                self.unsized = Segment(0, 1 << 62, 0)
                workers.append(asyncio.create_task(self._stream_whole(part, response, self.unsized)))
            else:
                count = self._connections_for(remote)
                workers.append(asyncio.create_task(self._worker(part, remote, first, response, 0)))
                workers.extend(asyncio.create_task(self._worker(part, remote, None, None, i))
                               for i in range(1, count))
            await _first_failure(workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            saver.cancel()
            await asyncio.gather(saver, return_exceptions=True)
            try:
                await self._save(part, remote)
            except DownloadError as exc:  # keep the original failure; the old state still holds
                log.warning("%s", exc)
            part.close()
            self._report()
            raise
        saver.cancel()
        await asyncio.gather(saver, return_exceptions=True)
        size = await part.finish(remote.size if self.plan is not None else self.unsized.pos,
                                 self.checksum, self.url)
        self._report()
        log.info("%s: saved %s (%d bytes)", mask_url(self.url), self.path, size)
        return DownloadResult(self.path, size, self.url)

    async def _worker(self, part: PartFile, remote: _Remote, segment: Segment | None,
                      response: httpx.Response | None, index: int) -> None:
        """One connection: fetch segments until none is left to take or split."""
        assert self.plan is not None
        url = self.urls[index % len(self.urls)]
        if not remote.ranges or self.single_stream:
            assert response is not None
            if segment is None:  # an empty file: nothing to stream
                await response.aclose()
            else:
                await self._stream_whole(part, response, segment)
            return
        while True:
            if segment is None:
                segment = self.plan.next_work()
                if segment is None:
                    if response is not None:
                        await response.aclose()
                    return
            try:
                await self._fetch_segment(part, remote, segment, url, response)
            except (HTTPStatusError, NetworkError) as failure:
                url = self._other_mirror(url, failure, index)
            finally:
                response = None
                self.plan.release(segment)
            segment = None

    def _other_mirror(self, url: str, failure: DownloadError, index: int) -> str:
        """A mirror that failed for good is dropped; the segment goes to the mirrors left."""
        self.dead_mirrors.add(url)
        alive = [u for u in self.urls if u not in self.dead_mirrors]
        if not alive:
            raise failure
        log.warning("%s: %s; going on with the other mirrors", mask_url(url), failure)
        return alive[index % len(alive)]

    async def _fetch_segment(self, part: PartFile, remote: _Remote, segment: Segment, url: str,
                             response: httpx.Response | None) -> None:
        """Fill one segment, retrying from the last byte written after every failure."""
        failures = 0
        while not segment.done:
            before = segment.pos
            try:
                if response is None:
                    response = await self._request_range(url, remote, segment)
                chunks = response.aiter_raw()
                if segment.check_from is not None:
                    chunks = await self._check_overlap(part, chunks, segment)
                await self._receive(part, chunks, segment, _body_end(response))
                if not segment.done and segment.pos == before:
                    raise _Retryable("the server sent no bytes for the requested range")
            except _Retryable as why:
                failures = 1 if segment.pos > before else failures + 1
                await self._backoff(failures, why, url)
            finally:
                if response is not None:
                    await response.aclose()
                    response = None

    async def _request_range(self, url: str, remote: _Remote, segment: Segment) -> httpx.Response:
        """Ask for the rest of ``segment`` and check the answer before any byte is written."""
        start = segment.check_from if segment.check_from is not None else segment.pos
        headers = {"Range": f"bytes={start}-{segment.end - 1}"}
        validator = remote.if_range() if url == self.url else remote.mirror_validators.get(url)
        if validator:
            headers["If-Range"] = validator
        response = await self._send_checked(url, headers)
        try:
            status = response.status_code
            if status == 206:
                content_range = parse_content_range(response.headers.get("content-range"))
                self._check_partial(response, content_range, start, remote, url)
                return response
            if status == 200:
                if validator and url == self.url:
                    raise _Restart("the remote file changed (If-Range answered with the whole file)")
                raise _Fallback("the server answered a range request with the whole file")
            if status == 416:
                self.refused_ranges += 1
                if self.refused_ranges > 1:
                    raise _Fallback("the server refused a range within the size it announced (HTTP 416)")
                raise _Restart("the server refused the resume range (HTTP 416)")
            self._raise_for_status(response)
            raise ProtocolError(f"{mask_url(url)}: unexpected HTTP {status}", url=url)
        except BaseException:
            await response.aclose()
            raise

    def _check_partial(self, response: httpx.Response, content_range: ContentRange | None,
                       start: int, remote: _Remote, url: str) -> None:
        """SPEC rule 6: a 206 must start where asked, for the same total and encoding."""
        if content_range is None or content_range.start is None:
            raise _Fallback(f"invalid Content-Range {response.headers.get('content-range')!r}")
        if content_range.total != remote.size:
            if remote.if_range():
                raise _Fallback(f"Content-Range total {content_range.total} differs from {remote.size}")
            raise _Restart(f"the remote size changed from {remote.size} to {content_range.total}")
        if content_range.start != start:
            raise _Fallback(f"asked for bytes from {start}, got a Content-Range from {content_range.start}")
        encoding = response.headers.get("content-encoding")
        encoding = None if encoding in (None, "", "identity") else encoding
        if encoding != remote.encoding:
            raise _Fallback(f"a range came back with Content-Encoding {encoding!r}")
        if url != self.url and url not in remote.mirror_validators:
            mirror_validator = (strong_etag(response.headers.get("etag"))
                                or http_date_valid(response.headers.get("last-modified")))
            if mirror_validator:
                remote.mirror_validators[url] = mirror_validator

    async def _check_overlap(self, part: PartFile, stream: AsyncIterator[bytes],
                             segment: Segment) -> AsyncIterator[bytes]:
        """No validator to send: compare re-fetched bytes before the resume point with the disk.

        Returns the stream positioned at the resume point.
        """
        assert segment.check_from is not None
        want = segment.start - segment.check_from
        got = bytearray()
        try:
            async for chunk in stream:
                got += chunk
                if len(got) >= want:
                    break
        except httpx.TransportError as exc:
            raise _Retryable(f"connection lost while checking the resume point: {exc!r}") from None
        if len(got) < want:
            raise _Retryable("the answer ended before the resume point")
        on_disk = await part.read(segment.check_from, want)
        if bytes(got[:want]) != on_disk:
            raise _Restart("the remote file changed (the bytes before the resume point differ)")
        segment.check_from = None
        return _prepend(bytes(got[want:]), stream)

    async def _receive(self, part: PartFile, source: AsyncIterator[bytes], segment: Segment,
                       body_end: int | None) -> None:
        """Stream a response body into ``segment``: buffered, positioned, never past its end.

        ``pos`` advances only when a write has landed, so a failure or a cancel at
        any await leaves the segment claiming exactly the bytes that are in the file.
        """
        limiter = self.engine.limiter
        watchdog = _Watchdog(self.engine.timeout)
        pending: asyncio.Task[None] | None = None
        chunks: list[bytes] = []
        buffered = 0
        offset = write_at = segment.pos
        flush_at = self.flush_bytes

        async def flush() -> None:
            nonlocal pending, chunks, buffered, write_at
            if pending is not None:
                await asyncio.shield(pending)
                pending = None
            if chunks:
                pending = asyncio.create_task(_write(part, segment, write_at, chunks))
                write_at += buffered
                chunks, buffered = [], 0

        self.active += 1
        try:
            async for chunk in source:
                room = segment.end - segment.received
                # A body that ends where the segment does is read to its end, so that its
                # connection goes back to the pool; any other is cut as soon as it is full.
                if len(chunk) > room or (len(chunk) == room and segment.end != body_end):
                    if room > 0:
                        chunks.append(chunk[:room])
                        buffered += room
                        segment.received += room
                    break
                chunks.append(chunk)
                size = len(chunk)
                buffered += size
                segment.received += size
                if buffered >= flush_at:
                    await flush()
                if limiter is not None:
                    await limiter.acquire(size)
                watchdog.feed(size)
            await flush()
            if pending is not None:
                await asyncio.shield(pending)
                pending = None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection lost after {segment.received - offset} bytes: {exc!r}") from None
        except _Stalled as exc:
            raise _Retryable(str(exc)) from None
        finally:
            self.active -= 1
            if pending is not None:
                await asyncio.shield(pending)
            if chunks and segment.pos == write_at:
                part.write_now(write_at, chunks)
                segment.pos = write_at + buffered
            segment.received = segment.pos

    async def _stream_whole(self, part: PartFile, response: httpx.Response, segment: Segment) -> None:
        """One stream without usable ranges: after a failure it starts again from byte zero."""
        expected = self.plan.size if self.plan is not None else None
        failures = 0
        while True:
            try:
                await self._receive(part, response.aiter_raw(), segment, _body_end(response))
                if expected is None or segment.done:
                    return
                raise _Retryable(f"the body ended after {segment.pos} of {expected} bytes")
            except _Retryable as why:
                failures += 1
                await self._backoff(failures, why)
            finally:
                await response.aclose()
            segment.pos = segment.received = 0
            response = await self._first_response()
            if self._describe(response).size != expected:
                await response.aclose()
                raise _Restart("the remote size changed")

    # -- requests, statuses, retries --------------------------------------------------
    async def _send(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """Send one GET (streamed); the host's connection slot is held until the response closes."""
        merged = httpx.Headers(self.headers)
        merged.update(headers)
        request = self.engine.client.build_request("GET", url, headers=merged)
        log.info("GET %s %s", mask_url(url), headers.get("Range", ""))
        release = await self.engine.acquire_host_slot(request.url.host)
        try:
            # httpx's read timeout is per read: a server trickling its headers would never
            # trip it, so the whole answer head (connect included) gets one deadline.
            response = await asyncio.wait_for(self.engine.client.send(request, stream=True),
                                              self.engine.timeout)
        except asyncio.TimeoutError:
            release()
            raise _Retryable(f"no response within {self.engine.timeout:g}s") from None
        except BaseException:
            release()
            raise
        response.stream = _ReleasingStream(response.stream, release)  # type: ignore[arg-type]
        return response

    async def _send_checked(self, url: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._send(url, headers)
        except httpx.TooManyRedirects:
            raise NetworkError(f"{mask_url(url)}: too many redirects (more than 20)", url=url) from None
        except httpx.UnsupportedProtocol as exc:
            raise DownloadError(f"{mask_url(url)}: {exc}", url=url) from None
        except httpx.TransportError as exc:
            if _certificate_problem(exc):
                raise NetworkError(f"{mask_url(url)}: TLS certificate verification failed ({exc}); "
                                   "pass --insecure to skip verification", url=url) from None
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if is_retryable_status(status):
            raise _Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")))
        raise HTTPStatusError(f"{mask_url(self.url)}: {status_message(status, response.reason_phrase)}",
                              status=status, url=self.url)

    async def _backoff(self, failures: int, why: _Retryable, url: str | None = None) -> None:
        if self.policy.gives_up(failures):
            raise NetworkError(f"{mask_url(url or self.url)}: giving up after {failures} failed attempts "
                               f"({why})", url=url or self.url)
        delay = self.policy.delay(failures, why.retry_after, _rng)
        log.info("%s: %s; retry %d of %d in %.1fs", mask_url(url or self.url), why, failures,
                 self.policy.retries, delay)
        await asyncio.sleep(delay)

    # -- state and progress ------------------------------------------------------------
    async def _save_loop(self, part: PartFile, remote: _Remote) -> None:
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._report()
            if time.monotonic() - last_save >= self.engine.save_interval:
                await self._save(part, remote)
                last_save = time.monotonic()

    async def _save(self, part: PartFile, remote: _Remote) -> None:
        """Persist what is on disk; only a ranged download with a known size can resume."""
        if self.plan is None or not remote.ranges or self.single_stream:
            return
        state = ResumeState(mask_url(self.url), remote.size, remote.etag, remote.last_modified, True,
                            self.plan.missing())
        await part.save_state(state)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        if self.plan is not None:
            downloaded, total = self.plan.received, self.plan.size
        else:
            downloaded, total = (self.unsized.pos if self.unsized else 0), None
        self.on_progress(Progress(self.path, downloaded, total, self.active))


# -- helpers ----------------------------------------------------------------------------
_rng = random.Random()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives back its host connection slot when closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


class _Stalled(Exception):
    pass


class _Watchdog:
    """Low-speed detection: httpx's read timeout is per read, so a trickle never trips it."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.started = time.monotonic()
        self.count = 0

    def feed(self, size: int) -> None:
        self.count += size
        now = time.monotonic()
        if now - self.started >= self.window:
            if self.count < LOW_SPEED_BYTES:
                raise _Stalled(f"less than {LOW_SPEED_BYTES} bytes in {self.window:.0f}s")
            self.started, self.count = now, 0


async def _write(part: PartFile, segment: Segment, offset: int, chunks: list[bytes]) -> None:
    """One positioned write; ``pos`` moves only once the bytes are in the file."""
    await part.write(offset, chunks)
    segment.pos = offset + sum(len(c) for c in chunks)


async def _prepend(prefix: bytes, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in stream:
        yield chunk


async def _first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; the first exception cancels the rest and is raised."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def _body_end(response: httpx.Response) -> int | None:
    """The file offset where this response's body ends, when its headers say."""
    if response.status_code == 206:
        content_range = parse_content_range(response.headers.get("content-range"))
        return None if content_range is None or content_range.end is None else content_range.end + 1
    return _content_length(response)


def _content_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length")
    return int(length) if length is not None and length.isascii() and length.isdigit() else None


def _certificate_problem(exc: Exception) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


