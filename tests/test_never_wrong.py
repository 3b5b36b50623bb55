"""Every way a wrong file could be published as done (or progress lost), each closed by a test.

Each test plays the adversary: a second job for the same destination, a planted symlink,
a server that ignores If-Range or sends more than its Content-Range, a mirror that changed,
a redirector that hands out another mirror on every request, a save that fails. The file
under its final name must be the server's file, or there must be no file and a clear error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from email.utils import formatdate

import pytest

import dlman
from dlman import storage
from helpers import fetch, saved_bytes, start_and_cancel, wait_for

MiB = 1 << 20


# -- one destination, one transfer ----------------------------------------------------------------
def test_two_downloads_of_one_destination_never_mix(server, make_data, tmp_path):
    v1, v2 = make_data(4 * MiB, seed=1), make_data(4 * MiB, seed=2)
    server.add("/v1/pkg.bin", v1, throttle=4 * MiB)
    server.add("/v2/pkg.bin", v2, throttle=4 * MiB)
    dest = tmp_path / "pkg.bin"

    async def main() -> list[object]:
        async with dlman.Engine(timeout=5, connections=4) as engine:
            return await asyncio.gather(engine.download(server.url("/v1/pkg.bin"), dest),
                                        engine.download(server.url("/v2/pkg.bin"), dest),
                                        return_exceptions=True)
    outcomes = asyncio.run(main())
    busy = [o for o in outcomes if isinstance(o, dlman.DestinationBusyError)]
    done = [o for o in outcomes if isinstance(o, dlman.DownloadResult)]
    assert len(busy) == 1 and len(done) == 1, outcomes
    assert "being downloaded by another transfer" in str(busy[0])
    assert dest.read_bytes() == (v1 if done[0].url.endswith("/v1/pkg.bin") else v2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.bin"]


def test_a_destination_locked_by_another_process_is_busy(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/f", data)
    dest = tmp_path / "f"
    holder = storage.PartFile(dest)

    async def hold_then_try() -> None:
        await holder.lock()   # another transfer (the lock is the same across processes: flock)
        try:
            with pytest.raises(dlman.DestinationBusyError, match="another transfer"):
                async with dlman.Engine(timeout=5) as engine:
                    await engine.download(server.url("/f"), dest)
        finally:
            holder.release()
    asyncio.run(hold_then_try())
    assert not dest.exists()
    fetch(server.url("/f"), dest)  # once released, the destination is free again
    assert dest.read_bytes() == data


def test_a_destination_that_appears_meanwhile_is_not_clobbered(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    server.add("/late", data, throttle=1 * MiB)
    dest = tmp_path / "late"

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=2) as engine:
            task = asyncio.create_task(engine.download(server.url("/late"), dest))
            await asyncio.to_thread(wait_for, lambda: saved_bytes(dest) > 0)
            dest.write_bytes(b"written by somebody else")
            with pytest.raises(dlman.DestinationExistsError, match="appeared while downloading"):
                await task
    asyncio.run(main())
    assert dest.read_bytes() == b"written by somebody else"
    assert dest.with_name("late.part").read_bytes() == data  # nothing lost: --overwrite publishes it
    fetch(server.url("/late"), dest, overwrite=True)
    assert dest.read_bytes() == data


def test_a_file_system_without_locks_still_downloads_with_a_warning(server, make_data, tmp_path, monkeypatch,
                                                                     caplog):
    import errno
    import fcntl

    data = make_data(MiB)
    server.add("/f", data)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/f"), tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data
    assert any("cannot lock files" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("planted", ["late.part", "late.part.state.tmp"])
def test_a_planted_symlink_is_never_followed(server, make_data, tmp_path, planted):
    data = make_data(2 * MiB)
    server.add("/late", data, throttle=1 * MiB)  # slow enough for several state saves
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / planted).symlink_to(victim)
    dest = tmp_path / "d" / "late"
    if planted == "late.part":
        with pytest.raises(dlman.StorageError, match="symbolic link"):
            fetch(server.url("/late"), dest)
        assert not dest.exists()
    else:
        fetch(server.url("/late"), dest, connections=1, save_interval=0.05)
        assert dest.read_bytes() == data and not dest.is_symlink()
    assert victim.read_bytes() == b"precious"


def test_a_planted_state_symlink_is_ignored_and_never_written_through(server, make_data, tmp_path, caplog):
    data = make_data(2 * MiB)
    server.add("/s", data)
    victim = tmp_path / "victim"
    victim.write_bytes(b'{"version": 2}')
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "s.part.state").symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/s"), tmp_path / "d" / "s")
    assert (tmp_path / "d" / "s").read_bytes() == data
    assert victim.read_bytes() == b'{"version": 2}'
    assert any("symbolic link" in r.getMessage() for r in caplog.records)


# -- what reaches the disk, and when ------------------------------------------------------------
def test_a_slow_connection_reaches_the_disk_and_the_state_within_a_second_or_two(server, make_data, tmp_path):
    """At 128 KiB/s a 1 MiB buffer would hold eight seconds of data in memory: it is written by age."""
    data = make_data(4 * MiB)
    res = server.add("/slow", data, throttle=128 << 10)
    dest = tmp_path / "slow"

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=1) as engine:
            task = asyncio.create_task(engine.download(server.url("/slow"), dest))
            await asyncio.to_thread(wait_for, lambda: res.bytes_served >= 384 << 10)
            served = res.bytes_served
            # what had arrived by then is claimed by a state saved within about 1.5 s
            await asyncio.to_thread(wait_for, lambda: saved_bytes(dest) >= served - (64 << 10), 3.0,
                                    what="a state claiming what had arrived")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())
    claimed = saved_bytes(dest)
    assert dest.with_name("slow.part").read_bytes()[:claimed] == data[:claimed]


# -- every answer checked against the file ---------------------------------------------------------
def test_a_206_with_another_etag_is_a_change_even_when_if_range_is_ignored(server, make_data, tmp_path):
    old, new = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    res = server.add("/ir", old, auto_etag=True, ignore_if_range=True, throttle=2 * MiB)
    dest = tmp_path / "ir"
    start_and_cancel(server.url("/ir"), dest, 2 * MiB, connections=2)
    res.data, res.throttle = new, None  # same size, new ETag; the server still answers ranges with 206
    fetch(server.url("/ir"), dest, connections=2)
    assert dest.read_bytes() == new


@pytest.mark.parametrize("framing", ["content-length", "close"])
def test_a_206_longer_than_its_content_range_is_never_written_past_it(server, make_data, tmp_path, framing):
    data = make_data(2 * MiB)
    server.add("/long", data, short_206=256 << 10, overlong_206=100_000,
               overlong_206_close=framing == "close")
    dest = tmp_path / "long"
    fetch(server.url("/long"), dest, connections=2)
    assert dest.read_bytes() == data


def test_a_mirror_that_changed_while_paused_is_dropped_on_resume(server, server2, make_data, tmp_path):
    old, new = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    a = server.add("/m", old, auto_etag=True, throttle=1 * MiB)
    b = server2.add("/m", old, auto_etag=True, throttle=1 * MiB)
    urls = [server.url("/m"), server2.url("/m")]
    dest = tmp_path / "m"
    start_and_cancel(urls, dest, 2 * MiB, connections=4)
    assert b.bytes_served > 0
    b.data = new  # the second mirror now holds another version of the same size
    a.throttle = b.throttle = None
    fetch(urls, dest, connections=4)
    assert dest.read_bytes() == old


def test_a_mirror_of_another_size_is_dropped_not_taken_for_a_change(server, server2, make_data, tmp_path, caplog):
    data = make_data(8 * MiB)
    a = server.add("/m", data, auto_etag=True, throttle=4 * MiB)
    server2.add("/m", data + b"trailing", auto_etag=True, throttle=4 * MiB)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    assert (tmp_path / "m").read_bytes() == data
    assert sum(1 for r in a.requests if r.range == "bytes=0-") == 1  # never started over...
    assert all(r.range for r in a.requests)                            # ...nor fell back to one stream
    assert not any("starting over" in r.getMessage() or "falling back" in r.getMessage()
                   for r in caplog.records)


def test_a_new_mirror_must_serve_the_bytes_on_disk_before_it_is_used(server, server2, make_data, tmp_path):
    """No validator can prove that two servers hold the same file: a stretch already written can."""
    data, other = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    server.add("/m", data, throttle=4 * MiB)
    b = server2.add("/m", other, throttle=4 * MiB)  # same size, other bytes, no validators
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    assert (tmp_path / "m").read_bytes() == data
    assert all(r.range is not None and r.range.startswith("bytes=") for r in b.requests)
    assert b.bytes_served <= 64 << 10  # it served its probe, never a segment


def test_mirrors_that_differ_only_in_their_query_are_two_sources(server, make_data, tmp_path):
    """``dl.php?id=1`` and ``dl.php?id=2`` are two files on one host: the second proves itself too."""
    files = {"1": make_data(8 * MiB, seed=1), "2": make_data(8 * MiB, seed=2)}

    def by_id(request):
        data = files[request.target.rpartition("id=")[2]]
        start, _, end = (request.headers.get("range") or "bytes=0-").removeprefix("bytes=").partition("-")
        first, last = int(start), int(end) if end else len(data) - 1
        time.sleep(0.05)  # a slow server: the second mirror asks before the first has finished
        return 206, {"Content-Range": f"bytes {first}-{last}/{len(data)}"}, data[first:last + 1]

    server.add("/dl.php", respond=by_id)
    fetch([server.url("/dl.php?id=1"), server.url("/dl.php?id=2")], tmp_path / "f", connections=4)
    assert (tmp_path / "f").read_bytes() == files["1"]


def test_credentials_go_only_to_the_origin_they_were_given_for(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    a = server.add("/m", data, throttle=4 * MiB)
    b = server2.add("/m", data, throttle=4 * MiB)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4,
          headers={"Authorization": "Bearer secret", "Cookie": "session=1", "X-Trace": "t"})
    assert (tmp_path / "m").read_bytes() == data
    assert a.requests and all(r.headers.get("authorization") == "Bearer secret" for r in a.requests)
    assert b.requests and not any("authorization" in r.headers or "cookie" in r.headers for r in b.requests)
    assert all(r.headers.get("x-trace") == "t" for r in b.requests)


def test_identity_is_asked_for_whatever_the_user_headers_say(server, make_data, tmp_path):
    data = make_data(2 * MiB)
    res = server.add("/g", data, gzip=True)
    fetch(server.url("/g"), tmp_path / "g", connections=2, headers={"Accept-Encoding": "gzip"})
    assert (tmp_path / "g").read_bytes() == data
    assert all(r.headers.get("accept-encoding") == "identity" for r in res.requests)


# -- redirects and mirrors -------------------------------------------------------------------------
def test_a_redirector_that_picks_another_mirror_each_time_serves_one_download(server, server2,
                                                                               make_data, tmp_path):
    data = make_data(8 * MiB)
    m1 = server2.add("/m1", data, etag='"mirror-one"', throttle=4 * MiB)
    m2 = server2.add("/m2", data, etag='"mirror-two"', throttle=4 * MiB)
    server.add("/get", redirect_cycle=[server2.url("/m1"), server2.url("/m2")])
    fetch(server.url("/get"), tmp_path / "f", connections=4)
    assert (tmp_path / "f").read_bytes() == data
    assert (m1.bytes_served == 0) != (m2.bytes_served == 0)  # one attempt, one pinned mirror


def test_an_expired_presigned_url_is_followed_again_from_its_redirector(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    obj = server2.add("/obj", data, etag='"o"', enforce_expiry=True, throttle=768 << 10)
    redirector = server.add("/share", redirect_to=server2.url("/obj"), presign_ttl=1.0)
    fetch(server.url("/share"), tmp_path / "obj", connections=4)
    assert (tmp_path / "obj").read_bytes() == data
    assert any(r.status == 403 for r in obj.requests)  # the signature did expire meanwhile...
    assert len(redirector.requests) > 1                # ...and the original URL was followed again


def test_a_redirect_followed_again_to_another_server_must_prove_it_serves_the_same_file(server, server2,
                                                                                       make_data, tmp_path):
    """The pinned URL expires; following the original again lands on a server with another version."""
    old, other = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    first = server2.add("/m1", old, enforce_expiry=True, first_range_throttle=256 << 10, throttle=2 * MiB)
    server2.add("/m2", other, throttle=2 * MiB)
    expires = f"?expires={time.time() + 0.8:.3f}"
    server.add("/get", redirect_cycle=[server2.url("/m1") + expires, server2.url("/m2")])
    dest = tmp_path / "f"
    try:
        fetch(server.url("/get"), dest, connections=4)
    except dlman.DownloadError:
        assert not dest.exists()
    else:
        assert dest.read_bytes() in (old, other)  # one version whole, never a mix
    assert any(r.status == 403 for r in first.requests)


def test_workers_never_start_on_a_mirror_known_dead(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    dead = server.add("/m", data, status=404)
    server2.add("/m", data)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    assert (tmp_path / "m").read_bytes() == data
    assert len(dead.requests) == 1


def test_a_mirror_failure_is_reported_under_that_mirror(server, server2, make_data, tmp_path, caplog):
    data = make_data(8 * MiB)
    server.add("/m", data, throttle=4 * MiB)
    server2.add("/m", data, statuses=[], ignore_range_after=None, status=410)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    warnings = [r.getMessage() for r in caplog.records if "gone" in r.getMessage()]
    assert warnings and all(server2.url("/m") in w and server.url("/m") not in w for w in warnings)


# -- connections that give up ----------------------------------------------------------------------
def test_a_connection_out_of_retries_hands_back_its_work(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/lim", data, connection_limit=2, throttle=8 * MiB)
    fetch(server.url("/lim"), tmp_path / "lim", connections=8, retries=1)
    assert (tmp_path / "lim").read_bytes() == data
    assert any(r.status == 503 for r in res.requests)


def test_the_last_connection_that_gives_up_fails_the_download(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    server.add("/gone", data, throttle=2 * MiB, drop_after=600 << 10)
    with pytest.raises(dlman.NetworkError, match="giving up"):
        fetch(server.url("/gone"), tmp_path / "gone", connections=2, retries=0)
    assert not (tmp_path / "gone").exists()


@pytest.mark.timeout(30)
def test_progress_means_a_meaningful_amount(server, make_data, tmp_path):
    """A server that drops every connection after a few hundred bytes is not retried for ever."""
    data = make_data(2 * MiB)
    server.add("/drip", data, drop_after=500, auto_etag=True)  # If-Range: each retry brings 500 new bytes
    started = time.monotonic()
    with pytest.raises(dlman.NetworkError, match="giving up"):
        fetch(server.url("/drip"), tmp_path / "drip", connections=1, retries=2)
    assert time.monotonic() - started < 30


@pytest.mark.timeout(60)
def test_a_trickled_overlap_is_a_stall(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/ov", data, throttle=2 * MiB)
    dest = tmp_path / "ov"
    start_and_cancel(server.url("/ov"), dest, 1 * MiB, connections=1)
    res.throttle = 200  # bytes/s: each read arrives in time, the overlap would take ~80 s
    with pytest.raises(dlman.NetworkError, match="giving up"):
        fetch(server.url("/ov"), dest, connections=1, retries=1, timeout=2)


# -- the saver and the callbacks -------------------------------------------------------------------
def test_a_failed_save_is_retried_and_later_saves_go_on(server, make_data, tmp_path, monkeypatch, caplog):
    data = make_data(6 * MiB)
    server.add("/sv", data, throttle=2 * MiB)
    dest = tmp_path / "sv"
    real = storage._save_state
    calls = {"n": 0}

    async def flaky(path, payload):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        await real(path, payload)

    monkeypatch.setattr(storage, "_save_state", flaky)
    seen: list[int] = []

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=2, save_interval=0.2) as engine:
            task = asyncio.create_task(engine.download(server.url("/sv"), dest))
            await asyncio.to_thread(wait_for, lambda: calls["n"] >= 4, what="saves after the failed one")
            seen.append(saved_bytes(dest))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    with caplog.at_level(logging.WARNING, logger="dlman"):
        asyncio.run(main())
    assert seen[0] > 0
    assert any("disk full" in r.getMessage() for r in caplog.records)


def test_a_save_that_keeps_failing_fails_the_download(server, make_data, tmp_path, monkeypatch):
    server.add("/sv", make_data(6 * MiB), throttle=2 * MiB)

    async def broken(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "_save_state", broken)
    with pytest.raises(dlman.StorageError, match="disk full"):
        fetch(server.url("/sv"), tmp_path / "sv", connections=1, save_interval=0.05)


def test_a_failing_progress_callback_never_stops_the_download(server, make_data, tmp_path, caplog):
    data = make_data(4 * MiB)
    server.add("/cb", data, throttle=2 * MiB)
    calls = []

    def callback(progress: dlman.Progress) -> None:
        calls.append(progress.downloaded)
        raise RuntimeError("a bug in the caller")

    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/cb"), tmp_path / "cb", on_progress=callback, connections=1, save_interval=0.2)
    assert (tmp_path / "cb").read_bytes() == data
    assert len(calls) > 2 and saved_bytes(tmp_path / "cb") == 0  # reported on; the state is gone
    assert sum("progress callback failed" in r.getMessage() for r in caplog.records) == 1


def test_no_state_file_is_written_after_the_file_is_published(server, make_data, tmp_path, monkeypatch):
    data = make_data(3 * MiB)
    server.add("/late-save", data, throttle=3 * MiB)
    real = storage._write_state

    def slow_write(path, payload):
        # a slow disk: this save lands only after the file was published, if the transfer lets it
        _wait_quietly(lambda: not path.with_name("late-save.part").exists())
        real(path, payload)

    monkeypatch.setattr(storage, "_write_state", slow_write)
    monkeypatch.setattr(storage, "_save_state", storage.aiofiles.os.wrap(slow_write))
    dest = tmp_path / "late-save"
    fetch(server.url("/late-save"), dest, connections=1, save_interval=0.1)  # returns once every thread ended
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late-save"]


def _wait_quietly(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


# -- existing destinations ----------------------------------------------------------------------
def test_overwrite_of_an_older_file_resumes_its_partial_data(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/ow", data, auto_etag=True, throttle=2 * MiB)
    dest = tmp_path / "ow"
    dest.write_bytes(b"an older version")
    start_and_cancel(server.url("/ow"), dest, 3 * MiB, connections=2, overwrite=True)
    res.throttle = None
    first_run = len(res.requests)
    fetch(server.url("/ow"), dest, overwrite=True)
    assert dest.read_bytes() == data
    later = res.requests[first_run:]
    assert later and all(r.range != "bytes=0-" and r.headers.get("if-range") for r in later)


def test_an_unsized_file_downloaded_twice_is_done_the_second_time(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/ns", data, chunked=True)
    dest = tmp_path / "ns"
    fetch(server.url("/ns"), dest)
    again = fetch(server.url("/ns"), dest)
    assert again.skipped and dest.read_bytes() == data
    server.add("/ns", make_data(MiB, seed=7), chunked=True)
    with pytest.raises(dlman.DestinationExistsError, match="--overwrite"):
        fetch(server.url("/ns"), dest)
    assert dest.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["ns"]


# -- credentials -------------------------------------------------------------------------------
@pytest.fixture
def netrc(tmp_path, monkeypatch, server):
    path = tmp_path / "netrc"
    path.write_text(f"machine {server.host} login netrc-user password netrc-pass\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    return path


def test_url_credentials_win_over_netrc(server, make_data, tmp_path, netrc):
    import base64
    res = server.add("/auth", make_data(1000))
    url = server.url("/auth").replace("://", "://url-user:url-pass@")
    fetch(url, tmp_path / "auth")
    expected = "Basic " + base64.b64encode(b"url-user:url-pass").decode()
    assert [r.headers.get("authorization") for r in res.requests] == [expected]


def test_an_explicit_authorization_header_wins_over_netrc(server, make_data, tmp_path, netrc):
    res = server.add("/auth", make_data(1000))
    fetch(server.url("/auth"), tmp_path / "auth", headers={"Authorization": "Bearer mine"})
    assert [r.headers.get("authorization") for r in res.requests] == ["Bearer mine"]


def test_netrc_is_used_when_nothing_else_is_given(server, make_data, tmp_path, netrc):
    import base64
    res = server.add("/auth", make_data(1000))
    fetch(server.url("/auth"), tmp_path / "auth")
    expected = "Basic " + base64.b64encode(b"netrc-user:netrc-pass").decode()
    assert [r.headers.get("authorization") for r in res.requests] == [expected]


# -- a file that just changed on Apache ---------------------------------------------------------
def test_a_freshly_modified_file_on_apache_downloads(server, make_data, tmp_path):
    """Apache: a Last-Modified within a second of Date is weak, and If-Range with it gets a 200."""
    data = make_data(8 * MiB)
    res = server.add("/fresh", data, last_modified=formatdate(time.time(), usegmt=True),
                     weak_etag=True, auto_etag=True, weak_date_window=1.0, throttle=8 * MiB)
    fetch(server.url("/fresh"), tmp_path / "fresh", connections=4)
    assert (tmp_path / "fresh").read_bytes() == data
    assert sum(1 for r in res.requests if r.range == "bytes=0-") == 1  # never restarted
    assert all(r.status == 206 for r in res.requests)  # If-Range only with a date Apache honours


def test_a_resume_with_a_weak_date_proves_the_overlap_instead(server, make_data, tmp_path):
    old, new = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    stamp = formatdate(time.time(), usegmt=True)
    res = server.add("/fresh", old, last_modified=stamp, weak_date_window=3600, throttle=2 * MiB)
    dest = tmp_path / "fresh"
    start_and_cancel(server.url("/fresh"), dest, 2 * MiB, connections=2)
    res.data, res.throttle = new, None  # changed within the same second: the date cannot tell
    fetch(server.url("/fresh"), dest, connections=2)
    assert dest.read_bytes() == new


# -- Ctrl-C during verification -------------------------------------------------------------------
def test_cancel_during_checksum_verification_is_prompt(server, tmp_path, monkeypatch):
    data = bytes(64 * MiB)
    server.add("/big", data)
    started = threading.Event()
    updates = {"n": 0}
    real_new = hashlib.new

    class SlowHash:
        """A disk that reads 1 MiB per 50 ms: the whole file would take about 3 s."""

        def __init__(self, name: str) -> None:
            self.inner = real_new(name)
            started.set()

        def update(self, block) -> None:
            updates["n"] += 1
            time.sleep(0.05)
            self.inner.update(block)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    monkeypatch.setattr(hashlib, "new", SlowHash)

    async def main() -> None:
        async with dlman.Engine(timeout=5) as engine:
            task = asyncio.create_task(engine.download(server.url("/big"), tmp_path / "big",
                                                       checksum="sha256:" + "0" * 64))
            await asyncio.to_thread(started.wait, 20)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    began = time.monotonic()
    asyncio.run(main())  # returns only once the executor's threads have ended
    assert time.monotonic() - began < 20
    assert updates["n"] < 20  # the digest stopped within a block or two, not after 64
    assert not (tmp_path / "big").exists() and (tmp_path / "big.part").exists()


# -- no leaks on failure paths ----------------------------------------------------------------------
def test_failed_downloads_leave_no_open_descriptor(server, make_data, tmp_path):
    server.add("/c", make_data(MiB))
    (tmp_path / "exists").write_bytes(b"other")
    before = len(os.listdir("/proc/self/fd"))
    for dest, options in [(tmp_path / "c", {"checksum": "sha256:" + "0" * 64}),
                          (tmp_path / "exists", {})]:
        with pytest.raises(dlman.DownloadError):
            fetch(server.url("/c"), dest, **options)
    assert len(os.listdir("/proc/self/fd")) <= before
