"""Engine semantics (SPEC "Engine semantics" rules 1-10) against the real local fault server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from email.utils import formatdate
from pathlib import Path

import pytest

import dlman
from faultserver import FaultServer
from helpers import claimed_ranges, fetch, saved_bytes, start_and_cancel

MiB = 1 << 20



def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".part", ".part.state")))


# -- rule 1: identity encoding --------------------------------------------------------------
def test_every_request_asks_for_identity_and_bytes_are_saved_as_served(server, make_data, tmp_path):
    data = make_data(3 * MiB)
    res = server.add("/g.bin", data, gzip=True)
    fetch(server.url("/g.bin"), tmp_path / "g.bin", connections=3, min_segment=256 << 10)
    assert (tmp_path / "g.bin").read_bytes() == data
    assert res.requests and all(r.headers.get("accept-encoding") == "identity" for r in res.requests)


# -- rule 2: the first request and what it decides ------------------------------------------
def test_first_request_is_a_get_for_bytes_0_onwards(server, make_data, tmp_path):
    res = server.add("/a", make_data(1000))
    fetch(server.url("/a"), tmp_path / "a")
    first = res.requests[0]
    assert (first.method, first.range) == ("GET", "bytes=0-")


def test_ranges_supported_splits_over_connections(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/s", data, throttle=4 * MiB)
    busiest = 0

    def on_progress(p: dlman.Progress) -> None:
        nonlocal busiest
        busiest = max(busiest, p.connections)

    fetch(server.url("/s"), tmp_path / "s", connections=4, on_progress=on_progress)
    assert (tmp_path / "s").read_bytes() == data
    # the server may still count a connection the client has just closed
    assert busiest == 4 and res.max_active >= 4


def test_no_ranges_means_one_stream_from_the_start(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/n", data, accept_ranges=False)
    fetch(server.url("/n"), tmp_path / "n", connections=8)
    assert (tmp_path / "n").read_bytes() == data
    assert res.max_active == 1 and len(res.requests) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("framing", ["no_content_length", "chunked"])
def test_body_without_size_streams_to_the_end(server, make_data, tmp_path, framing):
    data = make_data(2 * MiB + 17)
    server.add("/u", data, **{framing: True})
    result = fetch(server.url("/u"), tmp_path / "u")
    assert (tmp_path / "u").read_bytes() == data and result.size == len(data)


def test_empty_file(server, tmp_path):
    server.add("/empty", b"")
    result = fetch(server.url("/empty"), tmp_path / "e")
    assert result.size == 0 and (tmp_path / "e").read_bytes() == b""


# -- rule 3: .part, .part.state, verification and the atomic rename ---------------------------
def test_destination_appears_only_when_complete(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    server.add("/slow", data, throttle=2 * MiB)
    dest = tmp_path / "slow.bin"
    seen_part_while_running: list[bool] = []

    def on_progress(p: dlman.Progress) -> None:
        if p.downloaded < len(data):
            seen_part_while_running.append(dest.exists() or not dest.with_name("slow.bin.part").exists())

    fetch(server.url("/slow"), dest, connections=2, on_progress=on_progress)
    assert seen_part_while_running and not any(seen_part_while_running)
    assert dest.read_bytes() == data and leftovers(tmp_path) == []


def test_checksum_match_is_accepted(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/c", data)
    digest = hashlib.sha512(data).hexdigest()
    result = fetch(server.url("/c"), tmp_path / "c", checksum=f"sha-512={digest}")
    assert result.path.read_bytes() == data


def test_checksum_mismatch_raises_and_deletes_the_bad_data(server, make_data, tmp_path):
    server.add("/c", make_data(MiB))
    with pytest.raises(dlman.ChecksumError, match="checksum mismatch"):
        fetch(server.url("/c"), tmp_path / "c", checksum="sha256:" + "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_bad_checksum_syntax_is_invalid_input_before_any_request(server, tmp_path):
    res = server.add("/c", b"x")
    with pytest.raises(dlman.InvalidInputError):
        fetch(server.url("/c"), tmp_path / "c", checksum="sha256:abc")
    assert res.requests == []


# -- rule 4: segments, takeover, mirrors -----------------------------------------------------
def test_small_files_are_not_split_below_the_minimum_segment(server, make_data, tmp_path):
    res = server.add("/small", make_data(300_000))
    fetch(server.url("/small"), tmp_path / "small", connections=8)
    assert len(res.requests) == 1


def test_finished_connection_takes_over_half_of_the_slow_one(server, make_data, tmp_path):
    size = 8 * MiB
    data = make_data(size)
    res = server.add("/t", data, first_range_throttle=256 << 10)
    fetch(server.url("/t"), tmp_path / "t", connections=4)
    assert (tmp_path / "t").read_bytes() == data
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in res.requests if r.range]
    # The slow first connection (bytes=0-) keeps the first MiB: half of its quarter, the other half
    # being a segment of its own from the start. Only a takeover asks for a start inside that MiB.
    assert any(0 < s < MiB for s in starts), starts
    # and it ends the download early: the slow connection alone would need 4 s for its MiB
    slow = next(r for r in res.requests if r.range == "bytes=0-")
    assert max(r.time for r in res.requests) - slow.time < 3.0


def test_mirrors_share_the_segments(server, server2, make_data, tmp_path):
    size = 8 * MiB
    data = make_data(size)
    a = server.add("/m", data, throttle=2 * MiB)
    b = server2.add("/m", data, throttle=2 * MiB)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    assert (tmp_path / "m").read_bytes() == data
    # both carry a real share (after the second one proved itself), and nothing is fetched twice
    assert a.bytes_served >= size // 4 and b.bytes_served >= size // 4, (a, b)
    assert a.bytes_served + b.bytes_served <= 1.1 * size


def test_a_dead_mirror_is_dropped_and_the_others_finish(server, server2, make_data, tmp_path):
    data = make_data(8 * MiB)
    server.add("/m", data, throttle=8 * MiB)
    dead = server2.add("/m", data, status=404)
    fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=4)
    assert (tmp_path / "m").read_bytes() == data
    assert dead.requests  # it was tried, and its failure did not fail the download


def test_a_dead_first_mirror_is_skipped(server, server2, make_data, tmp_path):
    data = make_data(2 * MiB)
    server.add("/m", data, status=404)
    server2.add("/m", data)
    result = fetch([server.url("/m"), server2.url("/m")], tmp_path / "m", connections=2)
    assert result.path.read_bytes() == data


def test_per_host_connection_cap(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    server.add("/cap", data, throttle=2 * MiB)
    busiest = 0

    def on_progress(p: dlman.Progress) -> None:
        nonlocal busiest
        busiest = max(busiest, p.connections)

    fetch(server.url("/cap"), tmp_path / "cap", connections=8, max_connections_per_host=3,
          on_progress=on_progress)
    assert (tmp_path / "cap").read_bytes() == data
    assert 2 <= busiest <= 3


# -- rule 5: resume ------------------------------------------------------------------------
def test_state_is_saved_at_least_every_second(server, make_data, tmp_path):
    """What has arrived is claimed by the state within about a second, however slow the link."""
    data = make_data(6 * MiB)
    res = server.add("/p", data, throttle=512 << 10)
    dest = tmp_path / "p"
    samples: list[tuple[float, int, int]] = []  # (time, bytes the server sent, bytes the state claims)

    async def main() -> None:
        async with dlman.Engine(timeout=5, connections=2) as engine:
            task = asyncio.create_task(engine.download(server.url("/p"), dest))
            # Five seconds: a connection's 1 MiB buffer fills in two, so whatever waits for a
            # full buffer is seen lagging between its writes, not only before the first.
            while not task.done() and len(samples) < 100:
                samples.append((time.monotonic(), res.bytes_served, saved_bytes(dest)))
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())
    began = samples[0][0]
    lagging = []
    for now, _served, claimed in samples:
        if now - began < 2.0:
            continue
        # bytes sent 1.5 s ago (one save interval, the save's own time, the poll) must be claimed
        earlier = max(served for t, served, _ in samples if t <= now - 1.5)
        if claimed < earlier - 2 * (64 << 10):
            lagging.append((round(now - began, 2), earlier, claimed))
    assert not lagging, lagging
    part = dest.with_name("p.part").read_bytes()
    assert all(part[a:b] == data[a:b] for a, b in claimed_ranges(dest))


def test_resume_with_strong_etag_sends_if_range_and_fetches_only_the_rest(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/r", data, etag='"v1"', throttle=2 * MiB)
    dest = tmp_path / "r"
    start_and_cancel(server.url("/r"), dest, 3 * MiB, connections=2)
    assert dest.with_name("r.part").exists() and not dest.exists()
    res.throttle = None
    first_run = len(res.requests)
    fetch(server.url("/r"), dest, connections=2)
    assert dest.read_bytes() == data
    later = res.requests[first_run:]
    assert later and all(r.headers.get("if-range") == '"v1"' for r in later)
    assert all(r.range != "bytes=0-" for r in later)
    assert res.bytes_served < 1.3 * len(data)


def test_resume_uses_last_modified_when_there_is_no_etag(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    stamp = formatdate(1_700_000_000, usegmt=True)
    res = server.add("/lm", data, last_modified=stamp, throttle=2 * MiB)
    dest = tmp_path / "lm"
    start_and_cancel(server.url("/lm"), dest, 2 * MiB, connections=2)
    res.throttle = None
    first_run = len(res.requests)
    fetch(server.url("/lm"), dest)
    assert dest.read_bytes() == data
    assert all(r.headers.get("if-range") == stamp for r in res.requests[first_run:])


def test_changed_file_with_validator_restarts_with_a_warning(server, make_data, tmp_path, caplog):
    old, new = make_data(8 * MiB, seed=1), make_data(8 * MiB, seed=2)
    res = server.add("/ch", old, auto_etag=True, throttle=2 * MiB)
    dest = tmp_path / "ch"
    start_and_cancel(server.url("/ch"), dest, 2 * MiB, connections=2)
    res.data, res.throttle = new, None
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/ch"), dest)
    assert dest.read_bytes() == new
    assert any("changed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("changed", [False, True])
def test_resume_without_validators_checks_the_overlap(server, make_data, tmp_path, changed):
    old = make_data(8 * MiB, seed=3)
    new = old[: 6 * MiB] + make_data(2 * MiB, seed=4) if False else make_data(8 * MiB, seed=4)
    res = server.add("/ov", old, throttle=2 * MiB)
    dest = tmp_path / "ov"
    start_and_cancel(server.url("/ov"), dest, 2 * MiB, connections=2)
    res.throttle = None
    if changed:
        res.data = new  # same size, no validator: only the overlap can tell
    first_run = len(res.requests)
    fetch(server.url("/ov"), dest, connections=2)
    assert dest.read_bytes() == (new if changed else old)
    restarted = any(r.range == "bytes=0-" for r in res.requests[first_run:])
    assert restarted == changed


def test_stale_resume_answered_416_starts_over(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/st", data, throttle=2 * MiB)
    dest = tmp_path / "st"
    start_and_cancel(server.url("/st"), dest, 2 * MiB, connections=1)
    shorter = make_data(1 * MiB, seed=9)  # the remote file shrank below the resume point
    res.data, res.throttle = shorter, None
    fetch(server.url("/st"), dest)
    assert dest.read_bytes() == shorter


def test_corrupt_state_restarts_safely_with_a_warning(server, make_data, tmp_path, caplog):
    data = make_data(2 * MiB)
    server.add("/cs", data)
    dest = tmp_path / "cs"
    dest.with_name("cs.part").write_bytes(b"junk" * 100)
    dest.with_name("cs.part.state").write_bytes(b'{"version": 1, "size": ')
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/cs"), dest)
    assert dest.read_bytes() == data
    assert any("state" in r.getMessage() for r in caplog.records)


# -- rule 6: faults ------------------------------------------------------------------------
def test_dropped_connections_are_retried_from_the_last_byte(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/d", data, drop_after=300_000, auto_etag=True)
    fetch(server.url("/d"), tmp_path / "d", connections=2)
    assert (tmp_path / "d").read_bytes() == data
    assert res.bytes_served < 1.3 * len(data)


def test_random_drops_still_give_an_identical_file(server, make_data, tmp_path):
    data = make_data(6 * MiB)
    server.add("/rd", data, drop_probability=0.02, seed=7, auto_etag=True)
    fetch(server.url("/rd"), tmp_path / "rd", connections=4, retries=10)
    assert (tmp_path / "rd").read_bytes() == data


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_503_with_retry_after_is_honoured(server, make_data, tmp_path, form):
    data = make_data(1000)
    after = "1" if form == "seconds" else formatdate(time.time() + 2, usegmt=True)
    res = server.add("/busy", data, statuses=[(503, {"Retry-After": after})])
    fetch(server.url("/busy"), tmp_path / "busy")
    assert (tmp_path / "busy").read_bytes() == data
    gap = res.requests[1].time - res.requests[0].time
    assert gap >= 0.9  # the retry waited for the server's Retry-After, not the short backoff


def test_429_and_408_are_retried(server, make_data, tmp_path):
    data = make_data(1000)
    server.add("/tm", data, statuses=[(429, {"Retry-After": "0"}), 408, 500])
    fetch(server.url("/tm"), tmp_path / "tm")
    assert (tmp_path / "tm").read_bytes() == data


@pytest.mark.parametrize(("status", "words"), [(404, "not found"), (403, "not authorised"),
                                               (401, "not authorised"), (400, "HTTP 400")])
def test_other_4xx_fail_at_once_with_a_clear_message(server, tmp_path, status, words):
    res = server.add("/x", b"x", status=status)
    with pytest.raises(dlman.HTTPStatusError, match=words) as info:
        fetch(server.url("/x"), tmp_path / "x")
    assert info.value.status == status and len(res.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_retries_exhausted_raise_network_error_and_keep_partial_data(server, make_data, tmp_path):
    data = make_data(4 * MiB)
    res = server.add("/bad", data, etag='"e"', throttle=512 << 10, drop_after=MiB)
    dest = tmp_path / "bad"

    async def main() -> None:
        async with dlman.Engine(timeout=5, retries=2, connections=1) as engine:
            task = asyncio.create_task(engine.download(server.url("/bad"), dest))
            while saved_bytes(dest) == 0:
                assert not task.done()
                await asyncio.sleep(0.01)
            res.status = 503  # the stream is cut at 1 MiB; every later answer is a 503
            with pytest.raises(dlman.NetworkError, match="giving up after 3 failed attempts"):
                await task
    asyncio.run(main())
    assert saved_bytes(dest) > 0 and dest.with_name("bad.part").exists() and not dest.exists()


def test_stalled_connection_times_out_and_resumes(server, make_data, tmp_path):
    data = make_data(3 * MiB)
    res = server.add("/stall", data, stall_after=1 * MiB, stall_after_once=True, etag='"s"')
    fetch(server.url("/stall"), tmp_path / "stall", connections=1, timeout=1)
    assert (tmp_path / "stall").read_bytes() == data
    assert res.bytes_served < 1.3 * len(data)


def test_short_body_without_ranges_is_never_taken_as_complete(server, make_data, tmp_path):
    server.add("/short", make_data(MiB), accept_ranges=False, short_body=1000)
    with pytest.raises(dlman.NetworkError):
        fetch(server.url("/short"), tmp_path / "short", retries=1)
    assert not (tmp_path / "short").exists()


def test_shorter_206_is_accepted_and_the_rest_asked_again(server, make_data, tmp_path):
    data = make_data(3 * MiB)
    res = server.add("/s206", data, short_206=500_000)
    fetch(server.url("/s206"), tmp_path / "s206", connections=2)
    assert (tmp_path / "s206").read_bytes() == data
    assert len(res.requests) > 6


@pytest.mark.parametrize("wrong", ["start", "total"])
def test_wrong_content_range_never_writes_at_a_wrong_offset(server, make_data, tmp_path, wrong):
    data = make_data(4 * MiB)
    server.add("/wcr", data, wrong_content_range=wrong)
    fetch(server.url("/wcr"), tmp_path / "wcr", connections=4)
    assert (tmp_path / "wcr").read_bytes() == data


def test_200_to_a_later_range_falls_back_to_one_stream(server, make_data, tmp_path, caplog):
    data = make_data(4 * MiB)
    server.add("/ign", data, ignore_range_after=1)
    with caplog.at_level(logging.WARNING, logger="dlman"):
        fetch(server.url("/ign"), tmp_path / "ign", connections=4)
    assert (tmp_path / "ign").read_bytes() == data
    assert any("one plain stream" in r.getMessage() for r in caplog.records)


def test_cancellation_stops_promptly_saves_state_and_is_not_retried(server, make_data, tmp_path):
    data = make_data(8 * MiB)
    res = server.add("/cx", data, throttle=1 * MiB, etag='"c"')
    dest = tmp_path / "cx"

    async def main() -> float:
        async with dlman.Engine(timeout=5, connections=2) as engine:
            task = asyncio.create_task(engine.download(server.url("/cx"), dest))
            while saved_bytes(dest) == 0:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - started
    took = asyncio.run(main())
    assert took < 2.0
    requests_after_cancel = len(res.requests)
    assert saved_bytes(dest) > 0 and not dest.exists()
    time.sleep(0.3)
    assert len(res.requests) == requests_after_cancel


# -- rule 7: disk errors --------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied_names_the_path(server, tmp_path):
    server.add("/pd", b"data")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(dlman.StorageError, match="permission denied") as info:
        fetch(server.url("/pd"), locked / "pd")
    assert str(locked) in str(info.value)


def test_unwritable_destination_is_a_storage_error_naming_the_path(server, tmp_path):
    server.add("/nf", b"data")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(dlman.StorageError) as info:
        fetch(server.url("/nf"), blocker / "sub" / "nf")
    assert str(blocker) in str(info.value)


# -- rule 8: file names ---------------------------------------------------------------------
@pytest.mark.parametrize(("path", "disposition", "expected"), [
    ("/dir/report%20final.pdf", None, "report final.pdf"),
    ("/dir/", None, "index.html"),
    ("/x", 'attachment; filename="../../evil.sh"', "evil.sh"),
    ("/x", "attachment; filename=plain.txt; filename*=UTF-8''na%C3%AFve.txt", "naïve.txt"),
])
def test_file_names_follow_rule_8_and_stay_inside_the_directory(server, tmp_path, path, disposition,
                                                                 expected):
    server.add(path, b"payload", content_disposition=disposition)
    out = tmp_path / "out"
    out.mkdir()
    result = fetch(server.url(path), out)
    assert result.path == out / expected and result.path.read_bytes() == b"payload"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_directory_dest_with_trailing_slash_is_created(server, tmp_path):
    server.add("/f.txt", b"hello")
    result = fetch(server.url("/f.txt"), f"{tmp_path}/new/")
    assert result.path == tmp_path / "new" / "f.txt"


# -- rule 9: existing destination ------------------------------------------------------------
def test_identical_existing_file_is_done_without_downloading(server, make_data, tmp_path):
    data = make_data(2 * MiB)
    server.add("/e", data)
    (tmp_path / "e").write_bytes(data)
    result = fetch(server.url("/e"), tmp_path / "e",
                   checksum="sha256:" + hashlib.sha256(data).hexdigest())
    assert result.skipped and result.size == len(data)


def test_different_existing_file_is_not_clobbered(server, make_data, tmp_path):
    server.add("/e", make_data(1000))
    (tmp_path / "e").write_bytes(b"mine")
    with pytest.raises(dlman.DestinationExistsError, match="--overwrite"):
        fetch(server.url("/e"), tmp_path / "e")
    assert (tmp_path / "e").read_bytes() == b"mine"
    fetch(server.url("/e"), tmp_path / "e", overwrite=True)
    assert (tmp_path / "e").read_bytes() == make_data(1000)


# -- rule 10: security ----------------------------------------------------------------------
def test_credentials_are_not_forwarded_to_another_host(server, server2, tmp_path):
    target = server2.add("/t", b"secret-free")
    server.add("/r", redirect_to=server2.url("/t"))
    fetch(server.url("/r"), tmp_path / "t", headers={"Authorization": "Bearer abc", "Cookie": "a=b"})
    assert (tmp_path / "t").read_bytes() == b"secret-free"
    sent = target.requests[0].headers
    assert "authorization" not in sent and "cookie" not in sent
    assert target.requests[0].range == "bytes=0-"


def test_redirect_loop_fails_clearly(server, tmp_path):
    server.add("/loop", redirect_to=server.url("/loop"))
    with pytest.raises(dlman.DownloadError, match="too many redirects"):
        fetch(server.url("/loop"), tmp_path / "loop")


def test_tls_is_verified_by_default_and_insecure_skips_it(make_data, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with FaultServer(ssl_context=context) as tls:
        tls.add("/s", b"over tls")
        with pytest.raises(dlman.NetworkError, match="certificate"):
            fetch(tls.url("/s"), tmp_path / "s", retries=0)
        fetch(tls.url("/s"), tmp_path / "s", insecure=True)
        assert (tmp_path / "s").read_bytes() == b"over tls"


# -- limits, HTTP/2 option, API --------------------------------------------------------------
def test_limit_rate_is_shared_by_all_connections(server, make_data, tmp_path):
    data = make_data(3 * MiB)
    server.add("/lr", data)
    started = time.monotonic()
    fetch(server.url("/lr"), tmp_path / "lr", connections=4, limit_rate="1M", min_segment=256 << 10)
    took = time.monotonic() - started
    # one second of burst, then 1 MiB/s: at least ~2 s for 3 MiB whatever the connection count
    assert took >= 1.7


def test_http2_option_still_downloads_from_an_http1_server(server, make_data, tmp_path):
    data = make_data(MiB)
    server.add("/h2", data)
    fetch(server.url("/h2"), tmp_path / "h2", http2=True)
    assert (tmp_path / "h2").read_bytes() == data


def test_blocking_download_works_inside_a_running_event_loop(server, tmp_path):
    server.add("/nb", b"notebook")

    async def inside() -> dlman.DownloadResult:
        return dlman.download(server.url("/nb"), tmp_path / "nb")
    assert asyncio.run(inside()).path.read_bytes() == b"notebook"


def test_progress_callbacks_and_no_terminal_output(server, make_data, tmp_path, capsys):
    data = make_data(4 * MiB)
    server.add("/pg", data, throttle=4 * MiB)
    seen: list[dlman.Progress] = []

    async def main() -> dlman.DownloadResult:
        async with dlman.Engine(connections=2) as engine:
            return await engine.download(server.url("/pg"), tmp_path, on_progress=seen.append)
    result = asyncio.run(main())
    assert result.path == tmp_path / "pg" and result.size == len(data)
    assert seen[-1].downloaded == seen[-1].total == len(data)
    assert [p.downloaded for p in seen] == sorted(p.downloaded for p in seen)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_every_failure_is_a_download_error():
    for name in ("ChecksumError", "HTTPStatusError", "DestinationExistsError", "StorageError",
                 "NetworkError", "ProtocolError", "RemoteChangedError", "InvalidInputError"):
        assert issubclass(getattr(dlman, name), dlman.DownloadError)


@pytest.mark.parametrize("options", [
    {"retries": -1}, {"retries": 1.5}, {"timeout": 0}, {"timeout": -1}, {"timeout": "30"}, {"timeout": True},
    {"timeout": __import__("httpx").Timeout(5, read=-1)}, {"connections": 0}, {"connections": 65},
    {"limit_rate": "fast"}, {"min_segment": 0}, {"max_connections_per_host": 0}, {"save_interval": 0},
    {"headers": ["no colon"]},
])
def test_bad_engine_options_are_invalid_input(options):
    with pytest.raises(dlman.InvalidInputError):
        dlman.Engine(**options)


def test_an_httpx_timeout_is_accepted_and_its_read_timeout_is_the_stall_window(server, make_data, tmp_path):
    import httpx
    data = make_data(MiB)
    server.add("/t", data)
    engine = dlman.Engine(timeout=httpx.Timeout(10, connect=2, read=7))
    assert engine.timeout == 7
    fetch(server.url("/t"), tmp_path / "t", timeout=httpx.Timeout(10, connect=2, read=7))
    assert (tmp_path / "t").read_bytes() == data
